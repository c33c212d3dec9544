"""``dnnspec augment-preview SPEC``: a PNG grid of originals beside their augmented variants.

Loads the spec and its data (``--data`` or the spec's ``data`` statement), takes ``-n``
training images chosen with ``--seed``, and runs the spec's augment block on them
``--variants`` times, exactly as training does (same ops, order and value range). With
mixup or cutmix the picked images are the batch they mix within, as a training batch is:
each variant mixes them with a shuffled copy of themselves, and the line printed gives the
weight lam each variant kept of its own image.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="a .dnn spec with an augment block")
    parser.add_argument("--data", metavar="SOURCE", help="data source (default: the spec's data statement)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding downloaded data sets (fashion-mnist)")
    parser.add_argument("-n", type=int, default=8, metavar="N", help="number of images, one per row (default 8)")
    parser.add_argument("--variants", type=int, default=5, metavar="K",
                        help="augmented variants per image (default 5)")
    parser.add_argument("-o", "--out", default="augment_preview.png", metavar="PNG",
                        help="the grid to write (default: augment_preview.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the choice of images and the variants")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..augment import Augmenter, Mixer
    from ..data import load_data
    from ..errors import UsageError
    from ..frontend import load
    from ..plots import write_augment_grid

    if not 1 <= args.n <= 64 or not 1 <= args.variants <= 16:
        raise UsageError("augment-preview: -n must be within 1..64 and --variants within 1..16")
    model = load(args.spec)
    if model.input.kind != "image":
        raise UsageError(f"{args.spec}: augmentation works on images; this spec's input is a vector")
    if not model.augment:
        raise UsageError(f"{args.spec}: the spec has no augment block; add one, e.g. "
                         f"'augment {{ flip horizontal p=0.5 }}'")
    data = load_data(args.data, model, data_dir=args.data_dir, batch=1)
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(data.x_train), size=min(args.n, len(data.x_train)), replace=False))
    originals = data.x_train[pick]
    aug, mixer = Augmenter.from_model(model, data.x_train[:1024]), Mixer.from_model(model)
    variants, lams = [], []
    for _ in range(args.variants):
        x = aug(originals, rng) if aug else originals
        if mixer is not None:  # after the per-image ops, as in training
            x, mix = mixer(x, rng)
            lams.append("unmixed" if mix is None else f"{mix.lam:.2f}")
        variants.append(np.asarray(x, dtype=np.float32))
    path = write_augment_grid(args.out, originals, np.stack(variants), aug.value_range, _labels(data, model, pick))
    ops = ", ".join(s.kind for s in model.augment)
    mixed = f"; lam of each variant: {', '.join(lams)}" if lams else ""
    print(f"wrote {path}: {len(pick)} images x {args.variants} variants ({ops}){mixed}")
    return 0


def _labels(data, model, pick) -> list[str] | None:
    """Class names (or indices) of the picked images; None for regression targets."""
    if model.task.kind != "classification":
        return None
    names = data.class_names or model.task.class_names
    return [names[int(y)] if int(y) < len(names) else str(int(y)) for y in data.y_train[pick]]
