"""fedga: federated learning of Keras models trained by a genetic algorithm.

Importing the package quiets TensorFlow's start-up noise and keeps Kivy away from
sys.argv, so every entry point gets the same environment before Keras or Kivy load.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("KIVY_NO_ARGS", "1")
