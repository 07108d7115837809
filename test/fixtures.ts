/** The shared fixtures made with diffusers / PyTorch / pyarrow: `../shared/fixtures` beside the repo. */
import { join } from 'node:path';

export const FIXTURES = join(import.meta.dirname, '../../shared/fixtures');
export const UNET_FIXTURE_DIR = join(FIXTURES, 'diffusers-tiny-unet');
export const SCHEDULER_FIXTURE_DIR = join(FIXTURES, 'diffusers-scheduler');
