"""fedga: federated learning of Keras models trained by a genetic algorithm.

Importing the package quiets TensorFlow's start-up noise, keeps Kivy away from sys.argv and
keeps TensorFlow's libraries to themselves, so every entry point gets the same environment
before Keras or Kivy load.
"""

import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("KIVY_NO_ARGS", "1")

# TensorFlow loads its libraries with RTLD_GLOBAL when this module of its can be imported.
# That exports the LLVM built into TensorFlow to every library loaded later, and Mesa's
# OpenGL drivers (the windows' GL) then bind their own LLVM calls to it and crash the
# process. TensorFlow's wheel links its libraries explicitly, so it needs no global
# symbols (its own docstring says so); a stand-in with no-op flag setters keeps them local.
_GLOBAL_FLAGS = "tensorflow.python.pywrap_dlopen_global_flags"
if _GLOBAL_FLAGS not in sys.modules:
    _stand_in = types.ModuleType(_GLOBAL_FLAGS)
    for _setter in ("set_dlopen_flags", "reset_dlopen_flags"):
        setattr(_stand_in, _setter, lambda: None)
    sys.modules[_GLOBAL_FLAGS] = _stand_in
