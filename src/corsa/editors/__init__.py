"""Locate-then-edit model editors: ROME, MEMIT and AlphaEdit, in the same harness as CoRSA.

These methods do not train. Each update finds, for every edit, the vector that makes the model
answer y⁺ when placed at the subject's last token (targets), reads the keys that token gives the
MLP output projection of the edited layers (targets.keys), and solves in closed form for the
change of those projections that maps the keys to the new values while leaving ordinary text's
keys (their second moment over a corpus, stats) alone (solve). The change is low-rank, so it is
written as a PEFT LoRA adapter (apply): every corsa command, the bench's multi-update protocol
and vLLM read it as they read a fine-tuned adapter, and a later update adds its change to it.

- ROME (Meng et al. 2022): one layer, a rank-one change per edit;
- MEMIT (Meng et al. 2023): an update's edits together, spread over a range of layers;
- AlphaEdit (Fang et al., ICLR 2025): MEMIT's change projected onto the null space of the
  corpus keys, keeping the keys of earlier updates' edits too.

Written from the papers' equations for the decoder layouts of transformers 5 (layout finds the
layers and the projection from the config, never from the model's name).
"""
