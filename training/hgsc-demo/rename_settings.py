"""Rename the training settings in a training state written before they were renamed (once per file).

`TrainConfig.steps` became `train_steps` and `sample_steps` became `sample_grid_steps` (issue 23: one
name, one meaning; DDIM steps are `steps` everywhere else). The demo pair's training state in git
history (commit f7e9743, README.md here) stores the old names in its run record, which `--resume`
compares, so a restored copy is renamed once before it is resumed:

    python training/hgsc-demo/rename_settings.py training/hgsc-demo/checkpoint.safetensors

Only the run record changes (weights, EMA and optimiser states are copied as they are); the file is
replaced atomically. A file that already has the new names is left untouched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RENAMES = {"steps": "train_steps", "sample_steps": "sample_grid_steps"}


def rename(path: Path) -> bool:
    """Rename the settings in ``path``'s run record; returns whether the file changed."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    run = json.loads(meta["run"])
    train = run["train"]
    if not any(old in train for old in RENAMES):
        return False
    run["train"] = {RENAMES.get(k, k): v for k, v in train.items()}
    meta["run"] = json.dumps(run, sort_keys=True)
    tensors = load_file(str(path))
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    target = Path(sys.argv[1])
    print(f"{target}: " + ("renamed" if rename(target) else "already has the new names"))
