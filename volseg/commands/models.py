"""`volseg models [-c CFG]`: the registered networks with parameter counts.

With a config: every segmentation backbone at the size that config builds for it
(``model.params.<name>``, ``model.patch_size``), as ``--set model.name=<name>`` would.
"""

from __future__ import annotations

import argparse
import json

from volseg.commands._common import add_set_argument

HELP = "list the available networks with their parameter counts (-c CFG: at its sizes)"
DESCRIPTION = (
    "List every registered segmentation network (usable as model.name in a config), the GAN "
    "generator/discriminator and the projection heads, each built with default arguments. "
    "With -c CFG: each backbone at the size that config builds (model.params.<name>, "
    "model.patch_size), the selected one marked."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="show the sizes this config builds")
    add_set_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def config_sizes(cfg) -> list[dict]:
    """One row per backbone: its constructor arguments under ``cfg`` and parameter count."""
    from volseg.models.registry import MODELS
    from volseg.stages.common import check_model, model_kwargs

    rows = []
    for name in MODELS:
        variant = cfg.model_copy(deep=True)
        variant.model.name = name
        model = check_model(variant)  # on the meta device: no memory
        params = sum(p.numel() for p in model.parameters())
        kwargs = {
            k: v
            for k, v in model_kwargs(variant).items()
            if k not in ("in_channels", "out_channels")
        }
        rows.append(
            {
                "name": name,
                "selected": name == cfg.model.name,
                "parameters": params,
                "params": kwargs,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    if args.config:
        from volseg.config import load_config

        rows = config_sizes(load_config(args.config, args.overrides))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'':2}{'backbone':<14} {'params':>12}  arguments ({args.config})")
        for row in rows:
            mark = "* " if row["selected"] else "  "
            text = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "(defaults)"
            print(f"{mark}{row['name']:<14} {row['parameters']:>12,}  {text}")
        return 0
    from volseg.models.registry import describe_models

    rows = list(describe_models())
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    print(f"{'kind':<13} {'name':<22} {'params':>12}  description")
    for row in rows:
        print(f"{row.kind:<13} {row.name:<22} {row.parameters:>12,}  {row.summary}")
    return 0
