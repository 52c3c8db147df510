"""bagcams-deploy: deploy BagCAMs and the CAM family of WSOL models through ONNX, TensorRT and C++."""

__version__ = "0.1.0"
