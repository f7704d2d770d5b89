"""A few hundred common English words for the synthetic spelling task (lowercase, 3-12 letters)."""

WORDS = tuple("""
about above accept across action actor address admit adult afraid after again agent agree ahead
airport album alive allow almost alone along already always amount animal answer anyone apple
april area argue around arrive artist autumn avoid baby back balance banana basket battle beach
beautiful because become bedroom before begin behind believe below berry better between bicycle
birthday black blanket bottle bottom branch bread bridge bright brother brown budget build butter
button cabbage camera candle capital captain carpet carrot castle cattle center chair change cheese
cherry chicken children chocolate circle city classic clean clever climate clock cloud coffee cold
color common computer cookie corner cotton country cousin cover crystal culture current danger
daughter decide deliver desert design dinner direct doctor dollar door double dragon dream dress
driver early earth easy effect eight elephant elevator energy engine enough evening example expert
family famous farmer father feather figure finger finish flower follow forest forget fortune
friend future garden gentle giraffe glass golden grammar grape grass guitar hammer happy harbor
health heart hello history hobby holiday honey horse hospital hundred hungry island jacket jelly
journey jungle kettle kitchen kitten ladder language laptop lemon letter library light little
lizard machine magnet mango market master meadow memory message middle minute mirror mister
moment monkey morning mountain mouse music narrow nature needle never night noodle number ocean
office orange oxygen paper parrot party pencil people pepper perfect person picture pillow planet
pocket potato pretty problem puzzle question rabbit rainbow reason record river rocket salad
school science season second secret shadow silver simple sister slipper soccer spider spirit
spring squirrel stairs station strawberry street strong student summer sunday supper sweater
table teacher tennis thunder ticket tiger tomato tomorrow tongue travel treasure triangle trouble
tunnel turtle umbrella uncle unicorn valley vanilla village violin volcano wallet water weather
window winter wizard wonder yellow yesterday zebra zipper
""".split())
