"""DeepFaceLab SAEHD model files: restricted reading, key map, import into TorchSAE and export back (docs/dfl.md §8).

    recipe, model = import_model("path/to/model_dir", name="mymodel")

files.py (DFL's pickled part/data/optimizer files, read with the allow-list unpickler) and keymap.py (names
and layouts) are the format; convert.py builds and trains nothing itself: it uses the graph, optimizers and
checkpoints below it (engine.graph, engine.optim, engine.train.checkpoint).
"""

from engine.dfl.convert import (MODEL_OPTION_KEYS, dfl_model_options, dfl_part_arrays, export_dfl_model,
                                export_dfl_parts, import_model, load_dfl_part_file, load_dfl_parts,
                                load_dfl_weights)
from engine.dfl.files import find_model_names, part_path, read_data_file, read_part_file, write_part_file

__all__ = [
    "import_model", "load_dfl_parts", "load_dfl_weights", "load_dfl_part_file", "export_dfl_parts",
    "export_dfl_model", "dfl_part_arrays", "dfl_model_options", "MODEL_OPTION_KEYS", "find_model_names",
    "part_path", "read_data_file", "read_part_file", "write_part_file",
]
