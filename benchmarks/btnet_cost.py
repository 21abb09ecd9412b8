"""BTNet's compute and storage at the paper's size (seed 004 Fig. 4 and Fig. 5): IResNet-50 trunk, branches 7 / 14 /
28, FLOPs per input resolution (torch.utils.flop_counter) against φ_hr / φ_mr, which up-sample every face to 112,
and the parameters stored per resolution for ``share="bn"`` (the paper) and ``share="copy"`` (the authors' code).

    python benchmarks/btnet_cost.py [--depth r50] [--resolutions 7 14 28]

Random weights: FLOPs and parameter counts do not depend on their values.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrface.btnet_cost import cost_markdown  # noqa: E402
from lrface.nets.btnet import BTNet  # noqa: E402
from lrface.nets.iresnet import get_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", default="r50")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[7, 14, 28])
    args = parser.parse_args()
    trunk = get_model(args.depth)
    for share in ("bn", "copy"):
        btnet = BTNet(trunk, args.resolutions, share=share)
        print(f"## IResNet-{args.depth[1:]} BTNet, share={share!r}\n")
        print(cost_markdown(btnet))


if __name__ == "__main__":
    main()
