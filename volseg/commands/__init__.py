"""CLI subcommands, one module each: ``HELP``, ``add_arguments(parser)``, ``run(args)``.

Keep top-level imports light (argparse, pathlib): ``volseg --help`` imports every module here.
"""
