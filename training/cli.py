"""The command line every trainer shares: a YAML config, dotted overrides, train or only validate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training import config as config_io
from training.errors import TrainingError

#: Exit codes: 0 done; 2 the configuration, the data or a resume file cannot be used (one line on stderr).
EXIT_OK, EXIT_USAGE = 0, 2


def main(config_class: type, task_class: Callable[[Any], Any], *, prog: str, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train (the same command under torchrun for several processes), or only validate.",
        epilog="Overrides set single values, e.g. engine.steps=100 data.crops.crop_size=128 (values are YAML).",
    )
    parser.add_argument("--config", type=Path, help="YAML configuration (defaults for anything it leaves out)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides")
    parser.add_argument(
        "--eval-only", action="store_true", help="validate the model as model.init describes it, without training"
    )
    parser.add_argument("--output", type=Path, help="also write the summary (or the validation) as JSON")
    parser.add_argument(
        "--export", type=Path, metavar="DIR", help="with --eval-only: also export the model as built (e.g. the start)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    args = parser.parse_args(argv)
    if args.export is not None and not args.eval_only:
        parser.error("--export goes with --eval-only (a training run exports to engine.output_dir/export)")
    try:
        config = config_io.load(config_class, args.config, args.overrides)
    except config_io.ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_io.to_dict(config), sort_keys=False), end="")
        return 0
    from training.engine import Trainer

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trainer = None
    try:
        task = task_class(config)
        trainer = Trainer(task, config.engine, config)
        result = trainer.evaluate(export_to=args.export) if args.eval_only else trainer.fit()
    except TrainingError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if trainer is not None:
            trainer.close()
    if trainer.setup.is_main:
        text = json.dumps(result, indent=2, default=str)
        print(text)
        if args.output is not None:
            args.output.write_text(text + "\n", encoding="utf-8")
    return EXIT_OK
