"""The op types a serving signature may run: Kiln's allowlist (issue 10), used by ``_graph_scan``.

Anything a signature reaches (or the load-time init op runs) whose type is not listed here is
refused with 422 ``forbidden_ops``. Each category is one family of TensorFlow kernels that computes
on tensors in memory; the names come from TensorFlow's own op modules (``gen_<family>_ops``,
listed per category below) by ``scripts/op_allowlist.py``, and the zoo test
(``tests/reliability/test_op_allowlist.py``) checks that every model of the zoos passes.

Left out whole, because they reach outside the compile process or are not inference:
file I/O (``io``: ``ReadFile``, ``WriteFile``, readers, ``Save``/``Restore``: checkpoint ops live
in the SavedModel's saver functions, which no signature reaches), ``tf.data`` (sources that read
files, ``DatasetFromGraph`` rebuilding a pipeline from a string, data service), summaries,
debugger ops, ``PyFunc``, collectives, NCCL, send/recv, TPU, training updates (``Apply*``),
queues, barriers and staging areas, batching ops, boosted trees, ``RemoteCall``, ``Abort`` and
``ImmutableConst`` (memory-maps a file). ``InitializeTableFromTextFile[V2]`` is allowed only in
the load-time init op (``LOAD_TIME_ONLY``): it reads the SavedModel's own vocabulary asset.
``PrintV2`` to a ``file://`` stream and proto ops with a descriptor file are refused by
``_graph_scan`` although their types are listed.

Categories (source families in brackets):

* ``ARRAY`` [array]: constants, placeholders, identity, shape, slicing, gather/scatter, padding,
  quantisation, fingerprints.
* ``MATH`` [math, special_math, bitwise, linalg, spectral, manip, sparse, set, count, ragged_*]:
  element-wise and reduction math, matrix algebra, FFTs, sparse and ragged tensors.
* ``NN`` [nn, rnn, cudnn_rnn, ctc, candidate_sampling, uniform_quant]: convolutions, pooling,
  activations, normalisation, fused RNN cells, CTC, top-k.
* ``IMAGE_AUDIO`` [image, audio]: resizing, colour, boxes, and decoding/encoding images and WAV
  held in string tensors (no file).
* ``RANDOM`` [random, stateless_random, stateless_random_ops_v2, stateful_random,
  random_index_shuffle]: random numbers.
* ``STRINGS`` [string, parsing, decode_proto, encode_proto]: string functions, ``tf.Example`` and
  tensor (de)serialisation of strings already in memory.
* ``CONTROL_FLOW`` [control_flow, functional]: ``If``/``While``/``Case``, function calls (whose
  bodies ``_graph_scan`` walks too), TF1 ``Switch``/``Merge``/``Enter``/``Exit``.
* ``STATE`` [resource_variable, state, list, map, optional, composite_tensor, and the
  ``TensorArray``/``Stack``/dynamic-stitch ops of data_flow]: variables, TensorLists, TensorMaps.
* ``LOOKUP`` [lookup]: hash tables built from tensors, their lookups, imports and exports.
* ``LOGGING``: ``Assert``, ``Print``, ``PrintV2``, ``Timestamp``.
* ``GRAPH``: node types of the graph format itself (function arguments and results).
"""

from __future__ import annotations

__all__ = ["ALLOWED_OPS", "LOAD_TIME_ONLY"]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


ARRAY = _names("""
    BatchMatrixBandPart BatchMatrixDiag BatchMatrixDiagPart BatchMatrixSetDiag BatchToSpace
    BatchToSpaceND Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo CheckNumerics
    CheckNumericsV2 Concat ConcatOffset ConcatV2 ConjugateTranspose Const DebugGradientIdentity
    DebugGradientRefIdentity DeepCopy DepthToSpace Dequantize Diag DiagPart EditDistance Empty
    EnsureShape ExpandDims ExtractImagePatches ExtractVolumePatches FakeQuantWithMinMaxArgs
    FakeQuantWithMinMaxArgsGradient FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsGradient
    FakeQuantWithMinMaxVarsPerChannel FakeQuantWithMinMaxVarsPerChannelGradient Fill Fingerprint
    Gather GatherNd GatherV2 GuaranteeConst Identity IdentityN InplaceAdd InplaceSub
    InplaceUpdate InvertPermutation ListDiff LowerBound MatrixBandPart MatrixDiag MatrixDiagPart
    MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixSetDiag MatrixSetDiagV2
    MatrixSetDiagV3 MirrorPad MirrorPadGrad OneHot OnesLike Pack Pad PadV2 ParallelConcat
    Placeholder PlaceholderV2 PlaceholderWithDefault PreventGradient QuantizeAndDequantize
    QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4
    QuantizeAndDequantizeV4Grad QuantizeV2 QuantizedConcat QuantizedInstanceNorm
    QuantizedReshape Rank RefIdentity Reshape ResourceStridedSliceAssign Reverse ReverseSequence
    ReverseV2 ScatterNd ScatterNdNonAliasingAdd Shape ShapeN Size Slice Snapshot SpaceToBatch
    SpaceToBatchND SpaceToDepth Split SplitV Squeeze StopGradient StridedSlice
    StridedSliceAssign StridedSliceGrad TensorScatterAdd TensorScatterMax TensorScatterMin
    TensorScatterSub TensorScatterUpdate TensorStridedSliceUpdate Tile TileGrad Transpose Unique
    UniqueV2 UniqueWithCounts UniqueWithCountsV2 Unpack UnravelIndex UpperBound Where ZerosLike
""")

MATH = _names("""
    Abs AccumulateNV2 Acos Acosh Add AddManySparseToTensorsMap AddN AddSparseToTensorsMap AddV2
    All Angle Any ApproximateEqual ArgMax ArgMin Asin Asinh Atan Atan2 Atanh
    BandedTriangularSolve BatchCholesky BatchCholeskyGrad BatchFFT BatchFFT2D BatchFFT3D
    BatchIFFT BatchIFFT2D BatchIFFT3D BatchMatMul BatchMatMulV2 BatchMatMulV3
    BatchMatrixDeterminant BatchMatrixInverse BatchMatrixSolve BatchMatrixSolveLs
    BatchMatrixTriangularSolve BatchSelfAdjointEig BatchSelfAdjointEigV2 BatchSvd BesselI0
    BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1 BesselK0 BesselK0e BesselK1 BesselK1e
    BesselY0 BesselY1 Betainc Bincount BitwiseAnd BitwiseOr BitwiseXor Bucketize Cast Ceil
    Cholesky CholeskyGrad ClipByValue Complex ComplexAbs Conj Cos Cosh Cross Cumprod Cumsum
    CumulativeLogsumexp Dawsn DenseBincount DenseCountSparseOutput DenseToDenseSetOperation
    DenseToSparseSetOperation DeserializeManySparse DeserializeSparse Digamma Div DivNoNan Eig
    Einsum Equal Erf Erfc Erfinv EuclideanNorm Exp Expint Expm1 FFT FFT2D FFT3D FFTND Floor
    FloorDiv FloorMod FresnelCos FresnelSin Greater GreaterEqual HistogramFixedWidth IFFT IFFT2D
    IFFT3D IFFTND IRFFT IRFFT2D IRFFT3D IRFFTND Igamma IgammaGradA Igammac Imag Inv InvGrad
    Invert IsFinite IsInf IsNan LeftShift Less LessEqual Lgamma LinSpace Log Log1p
    LogMatrixDeterminant LogicalAnd LogicalNot LogicalOr Lu MatMul MatrixDeterminant
    MatrixExponential MatrixInverse MatrixLogarithm MatrixSolve MatrixSolveLs MatrixSquareRoot
    MatrixTriangularSolve Max Maximum Mean Min Minimum Mod Mul MulNoNan Ndtri Neg NextAfter
    NotEqual Polygamma PopulationCount Pow Prod Qr QuantizeDownAndShrinkRange QuantizedAdd
    QuantizedMatMul QuantizedMul RFFT RFFT2D RFFT3D RFFTND RaggedBincount
    RaggedCountSparseOutput RaggedCross RaggedFillEmptyRows RaggedFillEmptyRowsGrad RaggedGather
    RaggedRange RaggedTensorFromVariant RaggedTensorToSparse RaggedTensorToTensor
    RaggedTensorToVariant RaggedTensorToVariantGradient Range Real RealDiv Reciprocal
    ReciprocalGrad RequantizationRange RequantizationRangePerChannel Requantize
    RequantizePerChannel RightShift Rint Roll Round Rsqrt RsqrtGrad SegmentMax SegmentMaxV2
    SegmentMean SegmentMin SegmentMinV2 SegmentProd SegmentProdV2 SegmentSum SegmentSumV2 Select
    SelectV2 SelfAdjointEig SelfAdjointEigV2 SerializeManySparse SerializeSparse SetSize Sigmoid
    SigmoidGrad Sign Sin Sinh SobolSample SparseAdd SparseAddGrad SparseBincount SparseConcat
    SparseCountSparseOutput SparseCross SparseCrossHashed SparseCrossV2 SparseDenseCwiseAdd
    SparseDenseCwiseDiv SparseDenseCwiseMul SparseFillEmptyRows SparseFillEmptyRowsGrad
    SparseMatMul SparseReduceMax SparseReduceMaxSparse SparseReduceSum SparseReduceSumSparse
    SparseReorder SparseReshape SparseSegmentMean SparseSegmentMeanGrad SparseSegmentMeanGradV2
    SparseSegmentMeanWithNumSegments SparseSegmentSqrtN SparseSegmentSqrtNGrad
    SparseSegmentSqrtNGradV2 SparseSegmentSqrtNWithNumSegments SparseSegmentSum
    SparseSegmentSumGrad SparseSegmentSumGradV2 SparseSegmentSumWithNumSegments SparseSlice
    SparseSliceGrad SparseSoftmax SparseSparseMaximum SparseSparseMinimum SparseSplit
    SparseTensorDenseAdd SparseTensorDenseMatMul SparseToDense SparseToSparseSetOperation Spence
    Sqrt SqrtGrad Square SquaredDifference Sub Sum Svd TakeManySparseFromTensorsMap Tan Tanh
    TanhGrad TridiagonalMatMul TridiagonalSolve TruncateDiv TruncateMod UnsortedSegmentMax
    UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum Xdivy Xlog1py Xlogy Zeta
""")

NN = _names("""
    AllCandidateSampler ApproxTopK AvgPool AvgPool3D AvgPool3DGrad AvgPoolGrad
    BatchNormWithGlobalNormalization BatchNormWithGlobalNormalizationGrad BiasAdd BiasAddGrad
    BiasAddV1 BlockLSTM BlockLSTMGrad BlockLSTMGradV2 BlockLSTMV2 CTCBeamSearchDecoder
    CTCGreedyDecoder CTCLoss CTCLossV2 ComputeAccidentalHits Conv Conv2D Conv2DBackpropFilter
    Conv2DBackpropFilterV2 Conv2DBackpropInput Conv2DBackpropInputV2 Conv3D Conv3DBackpropFilter
    Conv3DBackpropFilterV2 Conv3DBackpropInput Conv3DBackpropInputV2 CudnnRNN CudnnRNNBackprop
    CudnnRNNBackpropV2 CudnnRNNBackpropV3 CudnnRNNCanonicalToParams CudnnRNNCanonicalToParamsV2
    CudnnRNNParamsSize CudnnRNNParamsToCanonical CudnnRNNParamsToCanonicalV2 CudnnRNNV2
    CudnnRNNV3 DataFormatDimMap DataFormatVecPermute DepthwiseConv2dNative
    DepthwiseConv2dNativeBackpropFilter DepthwiseConv2dNativeBackpropInput Dilation2D
    Dilation2DBackpropFilter Dilation2DBackpropInput Elu EluGrad FixedUnigramCandidateSampler
    FractionalAvgPool FractionalAvgPoolGrad FractionalMaxPool FractionalMaxPoolGrad
    FusedBatchNorm FusedBatchNormGrad FusedBatchNormGradV2 FusedBatchNormGradV3 FusedBatchNormV2
    FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D GRUBlockCell GRUBlockCellGrad InTopK
    InTopKV2 IsotonicRegression L2Loss LRN LRNGrad LSTMBlockCell LSTMBlockCellGrad LeakyRelu
    LeakyReluGrad LearnedUnigramCandidateSampler LogSoftmax LogUniformCandidateSampler MaxPool
    MaxPool3D MaxPool3DGrad MaxPool3DGradGrad MaxPoolGrad MaxPoolGradGrad MaxPoolGradGradV2
    MaxPoolGradGradWithArgmax MaxPoolGradV2 MaxPoolGradWithArgmax MaxPoolV2 MaxPoolWithArgmax
    NthElement QuantizedAvgPool QuantizedBatchNormWithGlobalNormalization QuantizedBiasAdd
    QuantizedConv2D QuantizedConv2DAndRelu QuantizedConv2DAndReluAndRequantize
    QuantizedConv2DAndRequantize QuantizedConv2DPerChannel QuantizedConv2DWithBias
    QuantizedConv2DWithBiasAndRelu QuantizedConv2DWithBiasAndReluAndRequantize
    QuantizedConv2DWithBiasAndRequantize QuantizedConv2DWithBiasSignedSumAndReluAndRequantize
    QuantizedConv2DWithBiasSumAndRelu QuantizedConv2DWithBiasSumAndReluAndRequantize
    QuantizedDepthwiseConv2D QuantizedDepthwiseConv2DWithBias
    QuantizedDepthwiseConv2DWithBiasAndRelu QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize
    QuantizedMatMulWithBias QuantizedMatMulWithBiasAndDequantize QuantizedMatMulWithBiasAndRelu
    QuantizedMatMulWithBiasAndReluAndRequantize QuantizedMatMulWithBiasAndRequantize
    QuantizedMaxPool QuantizedRelu QuantizedRelu6 QuantizedReluX Relu Relu6 Relu6Grad ReluGrad
    Selu SeluGrad Softmax SoftmaxCrossEntropyWithLogits Softplus SoftplusGrad Softsign
    SoftsignGrad SparseSoftmaxCrossEntropyWithLogits ThreadUnsafeUnigramCandidateSampler TopK
    TopKV2 UniformCandidateSampler UniformDequantize UniformQuantize UniformQuantizedAdd
    UniformQuantizedClipByValue UniformQuantizedConvolution UniformQuantizedConvolutionHybrid
    UniformQuantizedDot UniformQuantizedDotHybrid UniformRequantize
""")

IMAGE_AUDIO = _names("""
    AdjustContrast AdjustContrastv2 AdjustHue AdjustSaturation AudioSpectrogram
    CombinedNonMaxSuppression CropAndResize CropAndResizeGradBoxes CropAndResizeGradImage
    DecodeAndCropJpeg DecodeBmp DecodeGif DecodeImage DecodeJpeg DecodeJxl DecodePng DecodeWav
    DecodeWebP DrawBoundingBoxes DrawBoundingBoxesV2 EncodeJpeg EncodeJpegVariableQuality
    EncodePng EncodeWav ExtractGlimpse ExtractGlimpseV2 ExtractJpegShape
    GenerateBoundingBoxProposals HSVToRGB ImageProjectiveTransformV2 ImageProjectiveTransformV3
    Mfcc NonMaxSuppression NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4
    NonMaxSuppressionV5 NonMaxSuppressionWithOverlaps QuantizedResizeBilinear RGBToHSV
    RandomCrop ResizeArea ResizeBicubic ResizeBicubicGrad ResizeBilinear ResizeBilinearGrad
    ResizeNearestNeighbor ResizeNearestNeighborGrad SampleDistortedBoundingBox
    SampleDistortedBoundingBoxV2 ScaleAndTranslate ScaleAndTranslateGrad
    StatelessSampleDistortedBoundingBox
""")

RANDOM = _names("""
    Multinomial NonDeterministicInts ParameterizedTruncatedNormal RandomGamma RandomGammaGrad
    RandomIndexShuffle RandomPoisson RandomPoissonV2 RandomShuffle RandomStandardNormal
    RandomUniform RandomUniformInt RngReadAndSkip RngSkip StatefulRandomBinomial
    StatefulStandardNormal StatefulStandardNormalV2 StatefulTruncatedNormal StatefulUniform
    StatefulUniformFullInt StatefulUniformInt StatelessMultinomial
    StatelessParameterizedTruncatedNormal StatelessRandomBinomial StatelessRandomGammaV2
    StatelessRandomGammaV3 StatelessRandomGetAlg StatelessRandomGetKeyCounter
    StatelessRandomGetKeyCounterAlg StatelessRandomNormal StatelessRandomNormalV2
    StatelessRandomPoisson StatelessRandomUniform StatelessRandomUniformFullInt
    StatelessRandomUniformFullIntV2 StatelessRandomUniformInt StatelessRandomUniformIntV2
    StatelessRandomUniformV2 StatelessShuffle StatelessTruncatedNormal
    StatelessTruncatedNormalV2 TruncatedNormal
""")

STRINGS = _names("""
    AsString DecodeBase64 DecodeCSV DecodeCompressed DecodeJSONExample DecodePaddedRaw
    DecodeProtoV2 DecodeRaw EncodeBase64 EncodeProto ParseExample ParseExampleV2
    ParseSequenceExample ParseSequenceExampleV2 ParseSingleExample ParseSingleSequenceExample
    ParseTensor ReduceJoin RegexFullMatch RegexReplace SerializeTensor StaticRegexFullMatch
    StaticRegexReplace StringFormat StringJoin StringLength StringLower StringNGrams StringSplit
    StringSplitV2 StringStrip StringToHashBucket StringToHashBucketFast StringToHashBucketStrong
    StringToNumber StringUpper Substr UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode
    UnicodeScript UnicodeTranscode UnsortedSegmentJoin
""")

CONTROL_FLOW = _names("""
    Case ControlTrigger DeviceIndex Enter Exit FakeParam For If LoopCond Merge NextIteration
    NoOp PartitionedCall RefEnter RefExit RefMerge RefNextIteration RefSelect RefSwitch
    StatefulPartitionedCall StatelessCase StatelessIf StatelessWhile Switch SymbolicGradient
    ToBool While
""")

STATE = _names("""
    Assign AssignAdd AssignAddVariableOp AssignSub AssignSubVariableOp AssignVariableOp
    CompositeTensorVariantFromComponents CompositeTensorVariantToComponents ConsumeMutexLock
    CountUpTo DestroyResourceOp DestroyTemporaryVariable DisableCopyOnRead DynamicPartition
    DynamicStitch EmptyTensorList EmptyTensorMap IsVariableInitialized MutexLock MutexV2
    OptionalFromValue OptionalGetValue OptionalHasValue OptionalNone ParallelDynamicStitch
    ReadVariableOp ResourceCountUpTo ResourceGather ResourceGatherNd ResourceScatterAdd
    ResourceScatterDiv ResourceScatterMax ResourceScatterMin ResourceScatterMul
    ResourceScatterNdAdd ResourceScatterNdMax ResourceScatterNdMin ResourceScatterNdSub
    ResourceScatterNdUpdate ResourceScatterSub ResourceScatterUpdate ScatterAdd ScatterDiv
    ScatterMax ScatterMin ScatterMul ScatterNdAdd ScatterNdMax ScatterNdMin ScatterNdSub
    ScatterNdUpdate ScatterSub ScatterUpdate Stack StackClose StackCloseV2 StackPop StackPopV2
    StackPush StackPushV2 StackV2 TemporaryVariable TensorArray TensorArrayClose
    TensorArrayCloseV2 TensorArrayCloseV3 TensorArrayConcat TensorArrayConcatV2
    TensorArrayConcatV3 TensorArrayGather TensorArrayGatherV2 TensorArrayGatherV3
    TensorArrayGrad TensorArrayGradV2 TensorArrayGradV3 TensorArrayGradWithShape TensorArrayPack
    TensorArrayRead TensorArrayReadV2 TensorArrayReadV3 TensorArrayScatter TensorArrayScatterV2
    TensorArrayScatterV3 TensorArraySize TensorArraySizeV2 TensorArraySizeV3 TensorArraySplit
    TensorArraySplitV2 TensorArraySplitV3 TensorArrayUnpack TensorArrayV2 TensorArrayV3
    TensorArrayWrite TensorArrayWriteV2 TensorArrayWriteV3 TensorListConcat
    TensorListConcatLists TensorListConcatV2 TensorListElementShape TensorListFromTensor
    TensorListGather TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack
    TensorListPushBackBatch TensorListReserve TensorListResize TensorListScatter
    TensorListScatterIntoExistingList TensorListScatterV2 TensorListSetItem TensorListSplit
    TensorListStack TensorMapErase TensorMapHasKey TensorMapInsert TensorMapLookup TensorMapSize
    TensorMapStackKeys VarHandleOp VarIsInitializedOp Variable VariableShape VariableV2
""")

LOOKUP = _names("""
    AnonymousHashTable AnonymousMutableDenseHashTable AnonymousMutableHashTable
    AnonymousMutableHashTableOfTensors HashTable HashTableV2 InitializeTable InitializeTableV2
    LookupTableExport LookupTableExportV2 LookupTableFind LookupTableFindV2 LookupTableImport
    LookupTableImportV2 LookupTableInsert LookupTableInsertV2 LookupTableRemoveV2
    LookupTableSize LookupTableSizeV2 MutableDenseHashTable MutableDenseHashTableV2
    MutableHashTable MutableHashTableOfTensors MutableHashTableOfTensorsV2 MutableHashTableV2
""")

LOGGING = _names("""
    Assert Print PrintV2 Timestamp
""")

GRAPH = _names("""
    _Arg _Retval _DeviceArg _DeviceRetval _ArrayToList _ListToArray
""")

#: Allowed in the load-time init op only: tables filled from the SavedModel's vocabulary assets.
LOAD_TIME_ONLY = _names("InitializeTableFromTextFile InitializeTableFromTextFileV2")
#: Every op type a signature may reach.
ALLOWED_OPS: frozenset[str] = (ARRAY | MATH | NN | IMAGE_AUDIO | RANDOM | STRINGS | CONTROL_FLOW
                               | STATE | LOOKUP | LOGGING | GRAPH)
