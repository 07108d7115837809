/**
 * The one place that imports TensorFlow.js. `@tensorflow/tfjs` (the union package) is imported
 * rather than `@tensorflow/tfjs-core` alone because under Node only the union registers the
 * gradient functions ("gradient function not found for Mean" otherwise).
 */
import * as tf from '@tensorflow/tfjs';
export { tf };
export type { Tensor, Tensor1D, Tensor2D, Tensor3D, Tensor4D, Variable, Rank, NamedTensorMap, DataType, KernelConfig, NamedAttrMap, NamedTensorInfoMap, TensorInfo } from '@tensorflow/tfjs';
