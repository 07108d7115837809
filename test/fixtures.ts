/** The fixtures made with diffusers / PyTorch / pyarrow / polars / duckdb: `test/fixtures/` (see its README). */
import { join } from 'node:path';

export const FIXTURES = join(import.meta.dirname, 'fixtures');
export const UNET_FIXTURE_DIR = join(FIXTURES, 'diffusers-tiny-unet');
export const SCHEDULER_FIXTURE_DIR = join(FIXTURES, 'diffusers-scheduler');
export const VAE_FIXTURE_DIR = join(FIXTURES, 'diffusers-tiny-vae');
/** Two more AutoencoderKL configs (3 levels without quant convs or mid attention; quant_conv only): see its make.py. */
export const VAE_CONFIG_FIXTURES_DIR = join(FIXTURES, 'diffusers-vae-configs');
