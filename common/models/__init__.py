"""Where is the model: building any torchvision classifier or GhostNet v1/V2/V3 (``factory``; the published V2/V3
weights are found by ``ghostnet_weights``), checkpoints saved and read safely (``checkpoint``), any model file to a
model to predict with (``loading``), an ONNX model behind nn.Module (``onnx_model``), a model as a timm Hub folder
(``timm_folder``), and each model's eval preprocessing with its source (``preprocess``).

May import: data, parallel, the ground floor and the model files ghost_net.py and ghost_net_v23.py; never report,
cli, train or predict."""
