"""The `lqkernels` command (also `python -m lqkernels`): compressibility reports and pruning.

    lqkernels report MODEL [--scope layer|neuron|global] [--q 0.5] [--p 0.5 --pq 1.0] [--csv FILE]
    lqkernels prune MODEL --method sap|lq_neuron|magnitude [options] --out FILE
    lqkernels demo [--model MODEL] [options]    (python -m lqkernels.demo; `lqkernels demo --help`)

MODEL is `package.module:factory` (imported from the current directory or sys.path; factory() must
return an nn.Module) or a checkpoint path written by torch.save(model) (a whole pickled module:
load only files you trust). `--weights FILE` loads a state_dict into the model first.
`prune --out FILE` saves the whole pruned module with torch.save (masks as torch.nn.utils.prune
leaves them: weight_orig, weight_mask, hooks); `--remove` makes pruning permanent first
(prune.remove: plain weights with zeros). `prune` prints the step's record (weights touched, their
survivors before and after, weights left alone and why); every file written is confirmed with
`wrote FILE`. Exit status 2 on bad arguments, with the message.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

import torch
from torch import nn

from lqkernels import prune

__all__ = ["main", "load_model", "remove_masks"]


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """The model named by `spec` (`package.module:factory` or a torch.save'd module), optionally
    with a state_dict from `weights` loaded into it. ValueError / TypeError say what is wrong."""
    if os.path.exists(spec):
        model = torch.load(spec, weights_only=False, map_location="cpu")
        if not isinstance(model, nn.Module):
            raise TypeError(f"{spec!r} holds a {type(model).__name__}, not an nn.Module; for a state_dict "
                            f"pass MODEL as package.module:factory and the file as --weights")
    elif ":" in spec:
        module_name, _, factory_name = spec.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # factories in the working directory, like `python -m`
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load factory {spec!r}: {e}") from e
        model = factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"factory {spec!r} returned a {type(model).__name__}, not an nn.Module")
    else:
        raise ValueError(f"MODEL {spec!r} is neither an existing checkpoint file nor package.module:factory")
    if weights is not None:
        state = torch.load(weights, weights_only=True, map_location="cpu")
        model.load_state_dict(state)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Makes every torch.nn.utils.prune mask permanent (prune.remove): plain weights holding zeros
    where pruned, no hooks. Returns the model."""
    for module in model.modules():
        for name in [n[:-5] for n in module._buffers if n.endswith("_mask")]:
            if hasattr(module, name + "_orig"):
                torch.nn.utils.prune.remove(module, name)
    return model


@contextlib.contextmanager
def _printing_logs():
    """Prints lqkernels' INFO records (what a pruning step touched) to stdout inside the block."""
    logger = logging.getLogger("lqkernels")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed here, not a second time by the root logger's handlers
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lqkernels", description="ℓq compressibility reports and adaptive (ℓq / PQI) pruning of a "
        "PyTorch model (docs/method.md). MODEL: package.module:factory or a torch.save'd module file.",
        epilog="examples:\n  lqkernels report mypkg.models:make_mlp --scope neuron\n"
               "  lqkernels prune model.pt --method sap --scope layer --out pruned.pt\n"
               "  lqkernels demo --model mypkg.models:make_mlp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{report,prune,demo}")

    def common(p):
        p.add_argument("model", metavar="MODEL", help="package.module:factory, or a checkpoint from torch.save(model)")
        p.add_argument("--weights", help="a state_dict file to load into MODEL first")

    report = sub.add_parser("report", help="print each prunable weight's ℓq norm, SI_q, PQI, Hoyer, Gini and keep counts",
                            description="Compressibility report (lqkernels.prune.compressibility).")
    common(report)
    report.add_argument("--scope", choices=prune.SCOPES, default="layer",
                        help="neuron adds a row per output row (default: layer)")
    report.add_argument("--q", type=float, default=0.5, help="exponent of the l_q norm and SI_q, in (0, 1) (0.5)")
    report.add_argument("--p", type=float, default=0.5, help="PQ Index p (0.5)")
    report.add_argument("--pq", type=float, default=1.0, help="PQ Index q (1.0)")
    report.add_argument("--eta", type=float, default=0.0, help="Theorem 2's tail tolerance eta >= 0 (0)")
    report.add_argument("--tolerance", type=float, help="output tolerance for the s-term keep count per neuron")
    report.add_argument("--input-bound", type=float, default=1.0, help="bound B on the input norm (1)")
    report.add_argument("--input-norm", choices=("inf", "2"), default="inf", help="norm of the input bound (inf)")
    report.add_argument("--csv", help="also write the rows as CSV to this file")

    pr = sub.add_parser("prune", help="one pruning step, saved to --out",
                        description="One pruning step (lqkernels.prune.sap / lq_neuron / magnitude) on the "
                                    "survivors of any existing masks; saves the pruned model.")
    common(pr)
    pr.add_argument("--method", choices=("sap", "lq_neuron", "magnitude"), required=True)
    pr.add_argument("--scope", choices=prune.SCOPES, default=None,
                    help="sap: neuron (default) / layer / global; magnitude: layer (default) / global / neuron")
    pr.add_argument("--p", type=float, default=0.5, help="sap: p (0.5)")
    pr.add_argument("--q", type=float, default=None, help="sap: q (1.0); lq_neuron: q in (0, 1) (0.5)")
    pr.add_argument("--eta", type=float, default=0.0, help="sap / lq_neuron: eta >= 0 (0)")
    pr.add_argument("--gamma", type=float, default=1.0, help="sap / lq_neuron: gamma >= 0 (1)")
    pr.add_argument("--beta", type=float, default=0.9, help="sap / lq_neuron: largest fraction pruned, in (0, 1] (0.9)")
    pr.add_argument("--amount", type=float, help="magnitude: fraction of survivors to prune, in [0, 1]")
    pr.add_argument("--out", required=True, help="file to torch.save the pruned model to")
    pr.add_argument("--remove", action="store_true", help="make pruning permanent (prune.remove) before saving")
    # The demo parses its own options (lqkernels.demo); main() hands it everything after "demo".
    sub.add_parser("demo", add_help=False, help="measure, prune, sparsify and time the digits MLP or "
                                                "--model (lqkernels demo --help)")
    return parser


def _prune(model: nn.Module, args) -> None:
    if args.method == "sap":
        prune.sap(model, p=args.p, q=1.0 if args.q is None else args.q, eta=args.eta, gamma=args.gamma,
                  beta=args.beta, scope=args.scope or "neuron")
    elif args.method == "lq_neuron":
        if args.scope not in (None, "neuron"):
            raise ValueError(f"--method lq_neuron is per neuron; got --scope {args.scope}")
        prune.lq_neuron(model, q=0.5 if args.q is None else args.q, eta=args.eta, gamma=args.gamma, beta=args.beta)
    else:
        if args.amount is None:
            raise ValueError("--method magnitude needs --amount")
        prune.magnitude(model, args.amount, scope=args.scope or "layer")


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 on success)."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from lqkernels import demo  # here: the demo imports this module
        demo.main(rest, prog="lqkernels demo")
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        model = load_model(args.model, args.weights)
        if args.command == "report":
            report = prune.compressibility(model, q=args.q, p=args.p, pq=args.pq, scope=args.scope,
                                           eta=args.eta, tolerance=args.tolerance,
                                           input_bound=args.input_bound, input_norm=args.input_norm)
            print(report)
            if args.csv:
                report.to_csv(args.csv)
                print(f"wrote {args.csv} ({len(report.rows())} rows)")
            return 0
        with _printing_logs():  # the step's own record: weights touched, survivors, weights left alone
            _prune(model, args)
        if args.remove:
            remove_masks(model)
        torch.save(model, args.out)
        print(f"wrote {args.out} (the pruned model{', masks made permanent' if args.remove else ''})")
        return 0
    except (ValueError, TypeError, RuntimeError, OSError) as e:  # RuntimeError: e.g. an LQK_BACKEND that cannot run
        parser.exit(2, f"lqkernels {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
