"""``clipdistill <command> ...``: each command is a module's ``main(argv)``."""
from __future__ import annotations

import importlib
import logging
import platform
import sys
from importlib import metadata

from clipdistill import __version__
from clipdistill.errors import UserError

COMMANDS = {
    "demo": ("clipdistill.demo", "offline end-to-end demo: teacher, distilled student, baseline, table"),
    "train": ("clipdistill.train.loop", "train or distill a student from a YAML config"),
    "cache": ("clipdistill.cache.command", "run the teacher once over a dataset; train from its stored embeddings"),
    "curate": ("clipdistill.curate.command", "remove semantic near-duplicates (CLIP-CID balance / SemDeDup)"),
    "cluster": ("clipdistill.curate.cluster_command", "k-means pseudo-labels of teacher embeddings (CLIP-CID)"),
    "eval": ("clipdistill.eval.command", "evaluate a model (CLIP_benchmark tasks and schema, KD fidelity)"),
    "report": ("clipdistill.eval.report", "merge evaluation JSONs into a markdown or CSV table"),
    "export": ("clipdistill.export", "export a run's student as an open_clip model (safetensors)"),
    "inspect": ("clipdistill.inspect_model", "print what a model spec resolves to (preprocessing, context, bias...)"),
    "config": ("clipdistill.config_schema", "print every config key with its default and meaning"),
    "inherit": ("clipdistill.inherit.command", "initialise a student from a slice of its teacher's weights (TinyCLIP)"),
}

USAGE = "usage: clipdistill <command> [options]\n\ncommands:\n" + "\n".join(
    f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()) + \
    "\n\nRun 'clipdistill <command> --help' for a command's options, 'clipdistill config [SECTION]' for the\n" \
    "config keys (train, cache) with their defaults, 'clipdistill --version' for the versions in use."


def version_line() -> str:
    """This package's version and the ones a bug report needs (read without importing torch)."""
    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    return (f"clipdistill {__version__} (open_clip {installed('open_clip_torch')}, torch {installed('torch')}, "
            f"python {platform.python_version()})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"clipdistill: unknown command '{name}'\n\n{USAGE}", file=sys.stderr)
        return 2
    # Our own progress at INFO; libraries (open_clip logs model construction at INFO) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("clipdistill").setLevel(logging.INFO)
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except UserError as err:
        print(f"clipdistill {name}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write (or read) the command did not foresee: still one line, never a traceback
        where = f" {err.filename}" if err.filename else ""
        print(f"clipdistill {name}: error: could not access{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipdistill {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
