"""The catalog names where each block lives; that path imports the very object ``segblocks.<name>`` gives."""
import importlib

import segblocks


def test_import_path_of_every_block_resolves_to_the_top_level_object():
    for info in segblocks.list_blocks():
        module, _, attr = info.import_path.rpartition(".")
        assert getattr(importlib.import_module(module), attr) is getattr(segblocks, info.name), info.name
        assert info.load() is getattr(segblocks, info.name)
