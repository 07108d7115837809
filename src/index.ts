/**
 * swiftbrush-rx's public API: `import { runDistillation, distill, … } from 'swiftbrush-rx'`.
 *
 * - `runDistillation`: the `swiftbrush distill` job as one call (teacher + Parquet embeddings in,
 *   diffusers student + PEFT LoRA out, checkpoints, resume).
 * - `distill` / `swiftbrushStep` and the step's operators: the stream itself, to compose your own.
 * - `embeddingBatches` and the Parquet / npy helpers: the embedding input.
 * - The models (diffusers' `UNet2DConditionModel`, PEFT LoRA, schedules, DDIM) and safetensors I/O.
 * - `initBackend`: choose the TensorFlow.js backend (`runDistillation` picks the best one itself).
 */

// The TensorFlow.js instance the library uses (share it: a second copy would be a second engine).
export { tf } from './tf.ts';
export { initBackend, requestedBackend, BACKEND_NAMES, type BackendName, type BackendChoice } from './backend.ts';

// The job and the stream.
export { runDistillation, resolveRunSettings, exportStudent, type DistillRunOptions, type DistillRunResult } from './operators/run.ts';
export { prepareRunFolder, type RunFolderOptions } from './operators/run_folder.ts';
// The run's settings, defined once: types, ranges, defaults (what the CLI's flags and --config use).
export { SETTINGS, SETTING_KEYS, RUN_DEFAULTS, checkSettings, distillConfig, resumeSettings, type RunSettings, type RunOptions, type Setting } from './swiftbrush/config.ts';
export { distill, swiftbrushStep, toStepContext, oneAtATime, type DistillStreamOptions } from './operators/pipeline.ts';
export { OFFICIAL_DEFAULTS, createDistillState, disposeDistillState, resolveTeacherDirs, updatesStudent, type DistillConfig, type DistillState } from './operators/state.ts';
export { take, need, createStepContext, contextTensors, disposeContext, type StepContext, type StepTensors, type StepMetrics } from './operators/context.ts';
export { stepOperator } from './operators/operator.ts';

// The step's math as plain functions (the operators wrap these), its random draws and a reference loop.
export { latentShape, studentX0, guidedEpsilon, nanToNum, scoreGradient, vsdLossValue, studentGradients, loraTrainingSample, loraCondition, loraGradients } from './swiftbrush/math.ts';
export { stepOptimizer, stepStudent, stepLora, flushStudent, flushLora, updateEma, lrFactor, type OptimizerStepResult } from './swiftbrush/optim_step.ts';
export { windowPosition, finishWindow, type WindowPosition } from './swiftbrush/rules.ts';
export { SeededDraws, GivenDraws, DRAW_KEYS, type Draws } from './swiftbrush/draws.ts';
export type { StepObserver, ObservedTensor } from './swiftbrush/observer.ts';
export { referenceStep, referenceRun, type ReferenceMetrics } from './swiftbrush/reference_step.ts';

// The step's operators, in stream order, and the ones after the step.
export { offloadToReplicas } from './operators/offload_to_replicas.ts';
export { studentForward } from './operators/student_forward.ts';
export { noiseAtT } from './operators/noise_at_t.ts';
export { teacherCFG } from './operators/teacher_cfg.ts';
export { vsdUpdate } from './operators/vsd_update.ts';
export { noiseAtTPrime } from './operators/noise_at_t_prime.ts';
export { loraUpdate } from './operators/lora_update.ts';
export { emaUpdate } from './operators/ema_update.ts';
export { validation, type ValidationOptions } from './operators/validation.ts';
export { checkpoint, type CheckpointOptions } from './operators/checkpoint.ts';
export { metricsJsonl, stepRecords, type StepRecord } from './operators/metrics.ts';
export { progress } from './operators/progress.ts';
export { keepBestStudent, type KeepBestStudentOptions } from './eval/keep_best_student.ts';

// Embedding input and output.
export { embeddingBatches, readNullEmbedding, expandFiles, type EmbeddingBatch, type EmbeddingStreamOptions, type StreamPosition } from './streams/reader.ts';
export { EmbeddingFile, SHAPE_KEY, DTYPE_KEY, type EmbeddingFileInfo } from './streams/parquet.ts';
export { EmbeddingParquetWriter, writeEmbeddingParquet, type WriteOptions } from './streams/writer.ts';
export { EmbeddingFormatError } from './streams/errors.ts';
export { inspectEmbeddings, type InspectReport } from './streams/inspect.ts';
export { readNpy, parseNpy, importNpy, type NpyArray } from './streams/npy.ts';

// Models and weights.
export { UNet2DConditionModel, parseUNetConfig, type UNetConfig } from './models/unet_2d_condition.ts';
export { LoraAdapter, type LoraConfig } from './models/lora.ts';
export { NoiseSchedule, type SchedulerConfig } from './models/schedule.ts';
export { ddimSample, ddimStep, ddimTimesteps, type DdimSampleOptions } from './models/ddim.ts';
export { Adam, EmaWeights, GradAccumulator, clipGradNorm, type AdamOptions } from './models/optim.ts';
export { readSafetensors, writeSafetensors, parseSafetensors, serializeSafetensors, type StoredTensor, type DType } from './models/safetensors.ts';
export { loadPipeline, generate, type Pipeline, type GenerateOptions } from './eval/sampling.ts';
export { latestCheckpoint, listCheckpoints, readTrainingState, snapshotTrainingState, writeTrainingSnapshot, disposeTrainingSnapshot, type TrainingProgress, type TrainingSnapshot } from './training/checkpoint.ts';

// The embedded MNIST default's teacher and embeddings (shipped in the package's data/).
export { DEFAULT_TEACHER, DEFAULT_EMBEDDINGS } from './default_data.ts';
