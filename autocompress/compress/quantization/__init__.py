"""Quantization: the number format of the deployed model, with real kernels (torch.ao).

``formats`` declares each mode's number format, ``torch_ao`` wraps torch.ao (FX static int8,
QAT, dynamic int8, skeletons, what a converted model holds), ``technique`` is the technique.
"""

from autocompress.compress.quantization.formats import FLOAT_DTYPES, CastInputs, number_format
from autocompress.compress.quantization.technique import Quantization, select
from autocompress.compress.quantization.torch_ao import (INT8_MODES, check_quantized, float_layers,
                                                         quantized_layers, quantized_skeleton, weight_dtypes)

__all__ = ["FLOAT_DTYPES", "INT8_MODES", "CastInputs", "Quantization", "check_quantized", "float_layers",
           "number_format", "quantized_layers", "quantized_skeleton", "select", "weight_dtypes"]
