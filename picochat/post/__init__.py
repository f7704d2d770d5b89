"""Post-training: supervised finetuning on a mixture of conversations (sft.py) and RL on verifiable tasks (rl.py)."""
