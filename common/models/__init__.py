"""Where is the model: building any torchvision classifier or GhostNet (``factory``), checkpoints saved and read
safely (``checkpoint``), any model file to a model to predict with (``loading``), an ONNX model behind nn.Module
(``onnx_model``), and each model's eval preprocessing with its source (``preprocess``).

May import: data, parallel, the ground floor and ghost_net.py; never report, cli, train or predict."""
