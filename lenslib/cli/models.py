"""``lenslib models``: the bundled models, where they come from, whether they are cached."""

from __future__ import annotations

NAME = "models"
HELP = "List the bundled models, where they come from, and whether they are cached."
EXAMPLES = "  lenslib models"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from lenslib.models.catalog import list_models

    for row in list_models():
        state = "cached" if row["cached"] else ("not cached yet" if row["installed"] else "package missing")
        print(f"{row['name']:<14} {row['architecture']:<18} {row['n_layers']:>3} layers  "
              f"d_model {row['d_model']:<4} vocab {row['d_vocab']:<7} {state}")
        print(f"{'':<14} {row['quantisation']}; from {row['package']} ({row['install']})")
        print(f"{'':<14} original: {row['hub_name']}; licence: {row['licence']}")
    print("\nThe bundled models are 4-bit-quantised copies of the originals. Any other name is loaded\n"
          "from the Hugging Face hub when it is reachable, e.g. --model gpt2.")
    return 0
