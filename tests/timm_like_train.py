"""A small training script that follows timm's train.py interface (used by tests/test_timm.py).

It imports ``create_dataset`` from ``timm.data`` at run time as train.py does, lets the loader set
``dataset.transform``, picks the loss as train.py does (CrossEntropyLoss when smoothing is 0 and no
mixup), and trains a tiny timm ViT for the given epochs on CPU.
"""

import argparse
import json

import torch
from timm.data import create_dataset, create_transform
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import create_model

p = argparse.ArgumentParser()
p.add_argument("--dataset", default="")
p.add_argument("--data-dir", default=None)
p.add_argument("--train-split", default="train")
p.add_argument("--val-split", default="validation")
p.add_argument("--smoothing", type=float, default=0.1)
p.add_argument("--mixup", type=float, default=0.0)
p.add_argument("--cutmix", type=float, default=0.0)
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--num-classes", type=int, default=2)
p.add_argument("--img-size", type=int, default=32)
p.add_argument("--output", default="")
args = p.parse_args()

train = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=True)
val = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False)
train.transform = create_transform(args.img_size, is_training=False, mean=(0.5,) * 3, std=(0.5,) * 3)
val.transform = train.transform
model = create_model("vit_tiny_patch16_224", img_size=args.img_size, patch_size=8, num_classes=args.num_classes)
loss_fn = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else torch.nn.CrossEntropyLoss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
losses = []
for _ in range(args.epochs):
    for x, y in torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
correct = total = 0
with torch.no_grad():
    for x, y in torch.utils.data.DataLoader(val, batch_size=args.batch_size):
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
result = {"train_samples": len(train), "val_samples": total, "loss": losses[-1], "top1": correct / total, "classes": train.classes}
print(json.dumps(result))
if args.output:
    with open(args.output, "w") as f:
        json.dump(result, f)
