/**
 * The embedded default shipped in the package's `data/` folder: a small MNIST text-to-image teacher
 * (a diffusers pipeline folder), the embeddings of its 90 prompts and the null prompt, and the digit
 * classifier that scores samples. `swiftbrush default` distils and evaluates it; the paths also let
 * a library user try `runDistillation` without a model of their own.
 */
import { fileURLToPath } from 'node:url';

const DATA = fileURLToPath(new URL('../data/', import.meta.url));
export const DEFAULT_TEACHER = `${DATA}teacher`;
export const DEFAULT_EMBEDDINGS = `${DATA}embeddings.parquet`;
export const DEFAULT_CLASSIFIER_DIR = `${DATA}classifier/`;
