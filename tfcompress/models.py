"""Reference models: the networks that the compression papers report numbers on.

Every builder returns a functional `keras.Model` with a fixed `keras.Input`
shape (so `tfcompress.profile` and TFLite export work on it directly), takes
`input_shape` and `num_classes`, and ends in a Dense classifier whose activation
is `classifier_activation` ("softmax" by default, None for logits). Every model
saves to `.keras` and loads back with plain `keras.saving.load_model`.

| builder | source | params (default shapes) |
|---|---|---|
| `lenet_300_100` | Deep Compression (Han et al., ICLR 2016), LeNet-300-100 | 266,610 |
| `lenet5` | Deep Compression, the Caffe LeNet-5 | 431,080 |
| `small_cnn` | a 3-block Conv-BN-ReLU net, fast on CPU | 94,634 (width 32) |
| `ghostnet` | GhostNet 1.0x (Han et al., CVPR 2020) | 5,182,508 trainable |
| `resnet20` | CIFAR ResNet-20 (He et al., CVPR 2016) | 272,474 trainable |

References:
    Han, Mao, Dally. "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016, arXiv:1510.00149.
    LeCun, Bottou, Bengio, Haffner. "Gradient-based learning applied to document
    recognition", Proc. IEEE 1998 (LeNet-5; the Caffe variant is Caffe's
    examples/mnist/lenet.prototxt).
    Han, Wang, Tian, Guo, Xu, Xu. "GhostNet: More Features from Cheap
    Operations", CVPR 2020, arXiv:1911.11907.
    He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition",
    CVPR 2016, arXiv:1512.03385 (ResNet-20 for CIFAR-10, section 4.2).
    Chen et al. "AdderNet", CVPR 2020; Wu et al. "Shift", CVPR 2018;
    Rastegari et al. "XNOR-Net", ECCV 2016; Liu et al. "Bi-Real Net", ECCV 2018
    (the `resnet20(conv=...)` variants).
"""

import numbers

import keras
from keras import layers

from tfcompress.core.args import check_positive_int
from tfcompress.layers import (
    AdderConv,
    BinaryConv,
    GhostBottleneck,
    GhostConv,
    ShiftConv,
    make_divisible,
)

__all__ = [
    "BN_MOMENTUM",
    "CONVS",
    "GHOSTNET_CONFIG",
    "ghostnet",
    "lenet5",
    "lenet_300_100",
    "resnet20",
    "small_cnn",
]

CONVS = ("conv", "ghost", "shift", "adder", "binary")
LENET5_PADDINGS = ("auto", "valid", "same")
# BatchNormalization momentum of small_cnn and resnet20: PyTorch's default (0.1
# there, 0.9 in Keras terms), which the reference CIFAR ResNets use. Keras's 0.99
# leaves the moving statistics half-initialized after the ~60 steps of a few
# epochs on a small data set, and inference accuracy collapses.
BN_MOMENTUM = 0.9

# GhostNet 1.0x (ghostnet_pytorch/ghostnet.py `cfgs`): kernel, expansion
# (mid) channels, output channels, squeeze-excite ratio, stride.
GHOSTNET_CONFIG = (
    # stage 1
    (3, 16, 16, 0.0, 1),
    # stage 2
    (3, 48, 24, 0.0, 2),
    (3, 72, 24, 0.0, 1),
    # stage 3
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    # stage 4
    (3, 240, 80, 0.0, 2),
    (3, 200, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    # stage 5
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0.0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0.0, 1),
    (5, 960, 160, 0.25, 1),
)


# --------------------------------------------------------------------------- checks


def _check_input_shape(input_shape, rank=3):
    """Validates an input shape without the batch axis; returns it as a tuple of ints."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    ok = (
        shape is not None
        and (rank is None or len(shape) == rank)
        and len(shape) >= 1
        and all(
            not isinstance(d, bool) and isinstance(d, numbers.Integral) and d >= 1
            for d in shape
        )
    )
    if not ok:
        want = (
            "a tuple (height, width, channels) of positive integers"
            if rank == 3
            else "a tuple of positive integers"
        )
        raise ValueError(
            f"`input_shape` must be {want}, without the batch axis. "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def _check_activation(classifier_activation):
    """Resolves the classifier activation early, so a typo fails with a clear message."""
    if classifier_activation is None:
        return None
    try:
        keras.activations.get(classifier_activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`classifier_activation` must be None (logits) or a Keras activation "
            f"such as 'softmax'. Received: classifier_activation={classifier_activation!r}"
        ) from error
    return classifier_activation


def _classifier(x, num_classes, classifier_activation):
    return layers.Dense(num_classes, activation=classifier_activation, name="predictions")(x)


# --------------------------------------------------------------------------- LeNets


def lenet_300_100(input_shape=(28, 28, 1), num_classes=10, classifier_activation="softmax"):
    """LeNet-300-100, the fully connected MNIST network of Deep Compression.

        Flatten -> Dense(300, ReLU) -> Dense(100, ReLU) -> Dense(num_classes)

    With 784 inputs and 10 classes: 266,610 parameters and 266,200
    multiply-accumulates per example (784*300 + 300*100 + 100*10), as in Han et
    al. (Deep Compression, ICLR 2016, Table 2).

    Args:
        input_shape: shape of one example without the batch axis, any rank
            (it is flattened), e.g. (28, 28, 1) or (8, 8, 1).
        num_classes: number of output classes.
        classifier_activation: activation of the last layer; None gives logits.

    Returns:
        A functional `keras.Model` named "lenet_300_100".

    Raises:
        ValueError: for a non-positive dimension in `input_shape`, a
            non-positive `num_classes` or an unknown activation.

    Example:
        >>> model = lenet_300_100()
        >>> model.count_params()
        266610

    Reference:
        Han, Mao, Dally. "Deep Compression", ICLR 2016, arXiv:1510.00149 (LeCun
        et al. 1998 for the architecture).
    """
    input_shape = _check_input_shape(input_shape, rank=None)
    num_classes = check_positive_int("num_classes", num_classes)
    classifier_activation = _check_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="input")
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(300, activation="relu", name="fc1")(x)
    x = layers.Dense(100, activation="relu", name="fc2")(x)
    outputs = _classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name="lenet_300_100")


def _lenet5_valid_fits(size):
    # conv5 valid -> pool2 -> conv5 valid -> pool2 must leave at least one pixel.
    return size >= 16


def lenet5(
    input_shape=(28, 28, 1),
    num_classes=10,
    classifier_activation="softmax",
    padding="auto",
):
    """The Caffe LeNet-5 of Deep Compression (Han et al. 2016, "LeNet-5").

        Conv(20, 5x5) -> MaxPool(2) -> Conv(50, 5x5) -> MaxPool(2) -> Flatten
        -> Dense(500, ReLU) -> Dense(num_classes)

    This is Caffe's `examples/mnist/lenet.prototxt`, the network Deep Compression
    prunes: like the prototxt, the convolutions have no activation (the max
    pooling and the ReLU of the 500-unit layer are the nonlinearities). On 28x28
    inputs it has 431,080 parameters and 2,293,000 multiply-accumulates per
    example (conv1 288,000, conv2 1,600,000, fc1 400,000, fc2 5,000).

    Padding: the original uses "valid" convolutions, which need inputs of at
    least 16x16 (28 -> 24 -> 12 -> 8 -> 4). With the default `padding="auto"`
    the model uses "valid" when the input is at least 16x16 and otherwise
    switches to "same" convolutions and "same" pooling, so it also runs on the
    8x8 digits (8 -> 8 -> 4 -> 4 -> 2: 200 features into the 500-unit layer).

    Args:
        input_shape: (height, width, channels).
        num_classes: number of output classes.
        classifier_activation: activation of the last layer; None gives logits.
        padding: "auto" (default, see above), "valid" (the original; raises for
            inputs smaller than 16x16) or "same".

    Returns:
        A functional `keras.Model` named "lenet5".

    Raises:
        ValueError: for an invalid `input_shape`, `num_classes`, activation or
            `padding`, or `padding="valid"` with an input smaller than 16x16.

    Example:
        >>> lenet5().count_params()
        431080
        >>> lenet5(input_shape=(8, 8, 1)).output_shape
        (None, 10)

    Reference:
        Han, Mao, Dally. "Deep Compression", ICLR 2016, arXiv:1510.00149;
        Caffe's examples/mnist/lenet.prototxt (LeCun et al. 1998).
    """
    input_shape = _check_input_shape(input_shape)
    num_classes = check_positive_int("num_classes", num_classes)
    classifier_activation = _check_activation(classifier_activation)
    if padding not in LENET5_PADDINGS:
        raise ValueError(
            f"`padding` must be one of {', '.join(repr(p) for p in LENET5_PADDINGS)}. "
            f"Received: padding={padding!r}"
        )
    fits = all(_lenet5_valid_fits(s) for s in input_shape[:2])
    if padding == "valid" and not fits:
        raise ValueError(
            "lenet5 with padding='valid' needs inputs of at least 16x16 "
            "(two valid 5x5 convolutions and two 2x2 poolings); use padding='same' "
            f"or 'auto' for smaller inputs. Received: input_shape={input_shape!r}"
        )
    if padding == "auto":
        padding = "valid" if fits else "same"

    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(20, 5, padding=padding, name="conv1")(inputs)
    x = layers.MaxPooling2D(2, padding=padding, name="pool1")(x)
    x = layers.Conv2D(50, 5, padding=padding, name="conv2")(x)
    x = layers.MaxPooling2D(2, padding=padding, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(500, activation="relu", name="fc1")(x)
    outputs = _classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name="lenet5")


# --------------------------------------------------------------------------- small CNN


def small_cnn(input_shape=(28, 28, 1), num_classes=10, width=32, classifier_activation="softmax"):
    """A small, fast convolutional classifier for MNIST-sized images.

        Conv(width, 3, stride 2)   -> BN -> ReLU
        Conv(2*width, 3, stride 2) -> BN -> ReLU
        Conv(4*width, 3, stride 2) -> BN -> ReLU
        GlobalAveragePooling -> Dense(num_classes)

    All convolutions use "same" padding and no bias (BatchNormalization follows),
    so any input of at least 1x1 works (8x8 digits: 8 -> 4 -> 2 -> 1). The
    BatchNormalization momentum is 0.9 (PyTorch's 0.1) rather than Keras's 0.99,
    so the moving statistics are usable after the few dozen steps of a small
    data set. With width=32 and 10 classes: 94,634 parameters (94,186
    trainable); 2.14M multiply-accumulates per 28x28 example, 0.15M per 8x8
    example. One epoch of MNIST takes about 10-20 s on 2 CPU cores and reaches
    about 96% test accuracy.

    Args:
        input_shape: (height, width, channels).
        num_classes: number of output classes.
        width: channels of the first block (the others have 2*width and 4*width).
        classifier_activation: activation of the last layer; None gives logits.

    Returns:
        A functional `keras.Model` named "small_cnn".

    Raises:
        ValueError: for an invalid `input_shape`, `num_classes`, `width` or
            activation.

    Example:
        >>> model = small_cnn(input_shape=(8, 8, 1))
        >>> model.output_shape
        (None, 10)

    Reference:
        No paper: a baseline in the style of Ioffe & Szegedy, "Batch
        Normalization", ICML 2015, arXiv:1502.03167 (Conv-BN-ReLU blocks).
    """
    input_shape = _check_input_shape(input_shape)
    num_classes = check_positive_int("num_classes", num_classes)
    width = check_positive_int("width", width)
    classifier_activation = _check_activation(classifier_activation)
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for i, filters in enumerate((width, 2 * width, 4 * width), 1):
        x = layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name="small_cnn")


# --------------------------------------------------------------------------- GhostNet


def ghostnet(
    width=1.0,
    input_shape=(224, 224, 3),
    num_classes=1000,
    dropout=0.2,
    classifier_activation="softmax",
):
    """GhostNet (Han et al., CVPR 2020) with a width multiplier.

    The 1.0x table of the paper (and of the official `ghostnet_pytorch`):

        stem: Conv(16, 3x3, stride 2) -> BN -> ReLU
        16 GhostBottlenecks (kernel, mid, out, SE ratio, stride):
            (3, 16, 16, 0, 1)
            (3, 48, 24, 0, 2)   (3, 72, 24, 0, 1)
            (5, 72, 40, .25, 2) (5, 120, 40, .25, 1)
            (3, 240, 80, 0, 2)  (3, 200, 80, 0, 1) (3, 184, 80, 0, 1) (3, 184, 80, 0, 1)
            (3, 480, 112, .25, 1) (3, 672, 112, .25, 1)
            (5, 672, 160, .25, 2) (5, 960, 160, 0, 1) (5, 960, 160, .25, 1)
            (5, 960, 160, 0, 1) (5, 960, 160, .25, 1)
        Conv(960, 1x1) -> BN -> ReLU -> GlobalAveragePooling
        Conv(1280, 1x1, bias) -> ReLU -> Dropout -> Dense(num_classes)

    Every channel count except the 1280 of the head is
    `make_divisible(c * width, 4)`, as in the official code. The stem uses
    TensorFlow "same" padding (asymmetric for stride 2; PyTorch pads 1 on both
    sides), so imported PyTorch weights would shift by a pixel.

    Width 1.0, 224x224x3, 1000 classes: 5,182,508 trainable parameters (the
    paper: 5.2M); Keras's `count_params()` adds the BN moving statistics
    (21,968 more, 5,204,476 in all). `tfcompress.profile` counts 141.15M MACs
    per image (the paper: 141M FLOPs). Width 0.5: 2,587,292 trainable, 42.3M
    MACs (paper 2.6M / 42M); width 1.3: 7,358,820 trainable, 227.0M MACs
    (paper 7.3M / 226M).

    Args:
        width: width multiplier (0.5, 1.0 and 1.3 in the paper), > 0.
        input_shape: (height, width, channels). Inputs down to 1x1 work (every
            convolution uses "same" padding), e.g. (32, 32, 3) or (8, 8, 1).
        num_classes: number of output classes.
        dropout: dropout rate before the classifier, in [0, 1).
        classifier_activation: activation of the last layer; None gives logits.

    Returns:
        A functional `keras.Model` named "ghostnet_<width>x", e.g. "ghostnet_1.0x".

    Raises:
        ValueError: for a non-positive width, an invalid `input_shape`,
            `num_classes` or activation, or `dropout` outside [0, 1).

    Example:
        >>> model = ghostnet(width=0.5, input_shape=(32, 32, 3), num_classes=10)
        >>> model.output_shape
        (None, 10)

    Reference:
        Han, Wang, Tian, Guo, Xu, Xu. "GhostNet: More Features from Cheap
        Operations", CVPR 2020, arXiv:1911.11907 (Table 7; official
        ghostnet_pytorch/ghostnet.py for the configuration).
    """
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not width > 0:
        raise ValueError(f"`width` must be a positive number. Received: width={width!r}")
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"`dropout` must be a number in [0, 1). Received: dropout={dropout!r}")
    input_shape = _check_input_shape(input_shape)
    num_classes = check_positive_int("num_classes", num_classes)
    classifier_activation = _check_activation(classifier_activation)
    width = float(width)

    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(
        make_divisible(16 * width, 4), 3, strides=2, padding="same", use_bias=False,
        name="stem_conv",
    )(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, (kernel, mid, out, se_ratio, strides) in enumerate(GHOSTNET_CONFIG, 1):
        x = GhostBottleneck(
            make_divisible(mid * width, 4),
            make_divisible(out * width, 4),
            kernel_size=kernel,
            strides=strides,
            se_ratio=se_ratio,
            name=f"bottleneck{i}",
        )(x)
    x = layers.Conv2D(
        make_divisible(960 * width, 4), 1, use_bias=False, name="head_conv"
    )(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    x = layers.Conv2D(1280, 1, use_bias=True, name="conv_head")(x)
    x = layers.ReLU(name="conv_head_relu")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name=f"ghostnet_{width}x")


# --------------------------------------------------------------------------- ResNet-20


def _block_conv(conv, filters, strides, name):
    """The 3x3 convolution of a residual block, of the requested kind."""
    if conv == "conv":
        return layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, name=name
        )
    if conv == "ghost":
        return GhostConv(
            filters, kernel_size=3, strides=strides, relu=False,
            bn_momentum=BN_MOMENTUM, name=name,
        )
    if conv == "shift":
        # No bias: BatchNormalization follows and would cancel it.
        return ShiftConv(filters, 3, strides=strides, use_bias=False, name=name)
    if conv == "adder":
        return AdderConv(filters, 3, strides=strides, name=name)
    return BinaryConv(filters, 3, strides=strides, name=name)


def resnet20(
    conv="conv",
    input_shape=(32, 32, 3),
    num_classes=10,
    width=16,
    classifier_activation="softmax",
):
    """CIFAR ResNet-20 whose block convolutions can be Ghost, Shift, Adder or Binary.

        stem: Conv(width, 3x3) -> BN -> ReLU
        3 stages x 3 basic blocks, width, 2*width, 4*width channels, stride 2 at
        the first block of stages 2 and 3:
            y = BN(layer(ReLU(BN(layer(x))))) + shortcut(x);  out = ReLU(y)
        shortcut: identity, or Conv(1x1, stride) -> BN when the shape changes
        GlobalAveragePooling -> Dense(num_classes)

    `conv` picks the 3x3 `layer` of every block (18 layers); the stem, the 1x1
    projection shortcuts and the classifier stay ordinary, as in the AdderNet
    and XNOR-Net/Bi-Real experiments. Every BatchNormalization (and those inside
    GhostConv) uses momentum 0.9, the PyTorch default of the reference code.

    - "conv": `Conv2D(f, 3, use_bias=False)`: 272,474 trainable parameters
      (274,042 with the BN moving statistics), 40.8M MACs per 32x32 image.
    - "ghost": `GhostConv(f, kernel_size=3, strides=s, relu=False)` (s=2, d=3):
      143,210 trainable parameters, 21.5M MACs.
    - "shift": `ShiftConv(f, 3, strides=s, use_bias=False)` (the bias would be
      cancelled by the BN that follows). Needs `width >= 9`. 34,906 trainable
      parameters, 5.2M MACs.
    - "adder": `AdderConv(f, 3, strides=s)` (each followed by BN, as AdderNet
      requires): 80.2M additions and 0.7M MACs (stem, projections, classifier).
    - "binary": `BinaryConv(f, 3, strides=s)` and no ReLU anywhere before a
      binary convolution: neither in the blocks nor after the stem. A binary
      convolution takes `sign(x)` with `sign(0) = +1`, so a ReLU in front of it
      would make every input +1; the sign is the nonlinearity (Bi-Real Net /
      larq practice), and the BN in front of it centres its input. 40.1M
      binary operations, 0.9M MACs, 61.7 KiB of weights at 1 bit per binary
      weight (vs 1,070 KiB in float32).

    Args:
        conv: "conv", "ghost", "shift", "adder" or "binary".
        input_shape: (height, width, channels); (32, 32, 3) for CIFAR. Any size
            works ("same" padding everywhere), e.g. (8, 8, 1).
        num_classes: number of output classes.
        width: channels of the first stage (16 in the paper).
        classifier_activation: activation of the last layer; None gives logits.

    Returns:
        A functional `keras.Model` named "resnet20_<conv>".

    Raises:
        ValueError: for an unknown `conv` (the message lists the choices), an
            invalid `input_shape`, `num_classes`, `width` or activation, or
            `conv="shift"` with `width < 9`.

    Example:
        >>> model = resnet20("adder", input_shape=(8, 8, 1))
        >>> model.output_shape
        (None, 10)

    Reference:
        He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition",
        CVPR 2016, arXiv:1512.03385 (section 4.2); the variants follow Han et al.
        (GhostNet, CVPR 2020), Wu et al. (Shift, CVPR 2018), Chen et al.
        (AdderNet, CVPR 2020) and Rastegari et al. (XNOR-Net, ECCV 2016) with
        Liu et al. (Bi-Real Net, ECCV 2018).
    """
    if not isinstance(conv, str) or conv not in CONVS:
        raise ValueError(
            f"`conv` must be one of {', '.join(repr(c) for c in CONVS)}. "
            f"Received: conv={conv!r}"
        )
    input_shape = _check_input_shape(input_shape)
    num_classes = check_positive_int("num_classes", num_classes)
    width = check_positive_int("width", width)
    classifier_activation = _check_activation(classifier_activation)
    if conv == "shift" and width < 9:
        raise ValueError(
            "resnet20(conv='shift') needs width >= 9: a 3x3 shift needs at least "
            f"9 input channels. Received: width={width!r}"
        )
    use_relu = conv != "binary"

    def relu(x, name):
        return layers.ReLU(name=name)(x) if use_relu else x

    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = relu(x, "stem_relu")
    in_channels = width
    for stage in range(3):
        filters = width * 2**stage
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            y = _block_conv(conv, filters, strides, f"{name}_conv1")(x)
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
            y = relu(y, f"{name}_relu1")
            y = _block_conv(conv, filters, 1, f"{name}_conv2")(y)
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
            if strides != 1 or in_channels != filters:
                shortcut = layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False, name=f"{name}_proj"
                )(x)
                shortcut = layers.BatchNormalization(
                    momentum=BN_MOMENTUM, name=f"{name}_proj_bn"
                )(shortcut)
            else:
                shortcut = x
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            x = relu(x, f"{name}_relu2")
            in_channels = filters
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _classifier(x, num_classes, classifier_activation)
    return keras.Model(inputs, outputs, name=f"resnet20_{conv}")
