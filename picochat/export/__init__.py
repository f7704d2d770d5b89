"""Take a run anywhere: `picochat export` writes a Hugging Face model folder, `picochat import-hf` reads one back.

The folder holds the weights (safetensors), config.json, picochat's own modelling code for
`trust_remote_code=True` (hf_files/), the tokenizer as `tokenizers` files with picochat's chat template,
generation_config.json and a model card.
"""
