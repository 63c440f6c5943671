"""Quantization-aware training (QAT) with BatchNorm folding, in TFLite's int8 scheme.

Modules: `quantizers` (the int8 grids as fake quantization), `wrappers` (the QAT
layers), `roles` (which layer types are quantized how), `plan` (fusions found on
the model graph), `annotate` (per-layer choices), `api` (quantize_model).

The scheme is the one TFLite executes (Jacob et al., "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018):

* weights: symmetric int8 in [-127, 127], one scale per output channel
  (`per_channel=True`) or per tensor, `s = max|w| / 127`;
* activations: asymmetric int8, `x ~ s * (q - z)`, range from an exponential
  moving average of the batch min/max seen in training (zero always inside);
* bias: int32 at scale `s_in * s_w` (the converter rounds it; the QAT model's
  inference rounds it the same way, with the scale of its input's quantizer).

Fake quantization sits where TFLite quantizes: on the model input, on the folded
weights, and after the fused conv + bias + activation (never between them), so
the Keras QAT model and the exported file compute the same thing.

BatchNorm folding (Jacob et al. sec. 3.2; Krishnamoorthi 2018, sec. 3.2.2): a
Conv2D / DepthwiseConv2D / Dense followed by BatchNormalization trains as one
layer whose weights are `w * gamma / sigma` (moving sigma) quantized, with the
output corrected by `sigma / sigma_B` and the bias `beta - gamma * mu_B / sigma_B`
while training, so the forward pass equals conv-then-BN with batch statistics;
at inference it uses the moving statistics, exactly what is exported. The
gradient flows through the batch statistics `mu_B`, `sigma_B`, taken from the
quantized pass (one convolution per step) or, with
`quantize_model(..., batch_statistics="float")`, from an extra float pass, which
makes the forward pass and gradient exactly conv-then-BN's in training mode.

Supported layers: Conv2D, DepthwiseConv2D, Dense (activation linear, relu,
relu6, softmax or sigmoid), BatchNormalization (folded, or `QuantizeBatchNorm`
where there is nothing to fold into), Add, Subtract, Multiply, Average,
Concatenate, GlobalAveragePooling, AveragePooling, Rescaling, standalone ReLU /
Activation / Softmax, the scale-preserving MaxPooling, Flatten, Reshape,
Dropout, ZeroPadding, Cropping, Permute, and every tfcompress layer: GhostConv, GhostBottleneck and ShiftConv
(lowered first, see `tfcompress.lowering`), Shift, BinaryConv/BinaryDense (Sign
+ a conv on +/-1 inputs), TernaryConv/TernaryDense (their alpha * W_t kernel
int8-quantized; per output channel exactly) and AdderConv/AdderDense
(`QuantizeAdderWrapper`). A layer annotated "float" (`quantize_annotate_layer`)
stays float in the QAT model and in its int8 file, one annotated 16 runs as a 16x8
operator there (int16 activations, int8 weights): mixed precision.
Functional and Sequential models, with several inputs and outputs, nested models
(flattened) and shared layers; subclassed models cannot be cloned by Keras and
raise a ValueError.
"""

from tfcompress.quantization.annotate import QUANTIZE_CHOICES, quantize_annotate_layer
from tfcompress.quantization.api import float_layers, int16_layers, quantize_model
from tfcompress.quantization.quantizers import ActivationQuantizer, fake_quant_weights
from tfcompress.quantization.sensitivity import (
    QuantizationSensitivity,
    choose_float_layers,
    choose_precisions,
    quantization_sensitivity,
)
from tfcompress.quantization.wrappers import (
    QuantizeAdderWrapper,
    QuantizeBatchNorm,
    QuantizeWrapper,
)

__all__ = [
    "QUANTIZE_CHOICES",
    "ActivationQuantizer",
    "QuantizationSensitivity",
    "QuantizeAdderWrapper",
    "QuantizeBatchNorm",
    "QuantizeWrapper",
    "choose_float_layers",
    "choose_precisions",
    "fake_quant_weights",
    "float_layers",
    "int16_layers",
    "quantization_sensitivity",
    "quantize_annotate_layer",
    "quantize_model",
]
