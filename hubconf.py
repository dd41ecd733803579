"""torch.hub entry points: every model of the segblocks registry (:func:`segblocks.models.list_models`).

    model = torch.hub.load("<owner>/segblocks", "sam_tiny")                          # from GitHub
    model = torch.hub.load("/path/to/segblocks", "hrsam_tiny", source="local",
                           checkpoint="stage1.ckpt", checkpoint_prefix="student.")  # a local clone

Each entry is the registered function itself: the model's own keyword arguments plus the one
checkpoint convention (``checkpoint`` = a local file, ``checkpoint_prefix``, ``strict``). Nothing
is downloaded besides the code.
"""
from segblocks.models import list_models as _list_models
from segblocks.models import model_entrypoint as _model_entrypoint

dependencies = ["torch"]

for _name in _list_models():
    globals()[_name] = _model_entrypoint(_name)
del _name
