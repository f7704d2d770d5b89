"""picochat's conversation format (picochat/tokenizer/chat.py) as a Jinja chat template for transformers.

It renders the same ids as `render_for_completion` (with add_generation_prompt) and `render_conversation`
(without): BOS; a system message merged into the first user turn as "system\\n\\nuser" (there is no system
token); <|user_start|> text <|user_end|>; <|assistant_start|>, the assistant's parts (text, python calls in
<|python_start|> ... <|python_end|>, tool output in <|output_start|> ... <|output_end|>), <|assistant_end|>.
The text between two special tokens is tokenized as one string, as chat.py does, except that two adjacent
text parts of one assistant message are joined first.
"""

CHAT_TEMPLATE = (
    "{%- macro text_of(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] != 'text' -%}{{- raise_exception('only assistant messages may hold ' + part['type'] + ' parts') -}}{%- endif -%}"
    "{{- part['text'] -}}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set system = none -%}"
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = text_of(messages[0]['content']) -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- if not turns or turns[0]['role'] != 'user' -%}{{- raise_exception('a system message must be followed by a user message') -}}{%- endif -%}"
    "{%- endif -%}"
    "{{- '<|bos|>' -}}"
    "{%- for message in turns -%}"
    "{%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}"
    "{%- if message['role'] != expected -%}{{- raise_exception('message ' ~ loop.index0 ~ ' has role ' ~ message['role'] ~ ' where ' ~ expected ~ ' was expected: turns go (system), user, assistant, user, ...') -}}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<|user_start|>' -}}"
    "{%- if loop.first and system is not none -%}{{- system + '\\n\\n' -}}{%- endif -%}"
    "{{- text_of(message['content']) -}}"
    "{{- '<|user_end|>' -}}"
    "{%- else -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'python' -%}{{- '<|python_start|>' + part['text'] + '<|python_end|>' -}}"
    "{%- elif part['type'] == 'python_output' -%}{{- '<|output_start|>' + part['text'] + '<|output_end|>' -}}"
    "{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|assistant_end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)
