/** The fixtures made with diffusers / PyTorch / pyarrow / polars / duckdb: `test/fixtures/` (see its README). */
import { join } from 'node:path';

export const FIXTURES = join(import.meta.dirname, 'fixtures');
export const UNET_FIXTURE_DIR = join(FIXTURES, 'diffusers-tiny-unet');
export const SCHEDULER_FIXTURE_DIR = join(FIXTURES, 'diffusers-scheduler');
