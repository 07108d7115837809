/**
 * `swiftbrush train-classifier`: trains the evaluation CNN (src/mnist/classifier.ts) on the TRAIN
 * split only, reports its held-out accuracy, and saves data/classifier/{model.safetensors,config.json}.
 */
import type { Command } from 'commander';
import { initBackend } from '../backend.ts';
import { log } from '../log.ts';
import { backendOption, float, int } from './options.ts';
import { loadMnist } from '../mnist/dataset.ts';
import { accuracy, defaultConfig, DEFAULT_CLASSIFIER_DIR, DigitClassifier } from '../mnist/classifier.ts';
import { Scorer } from '../mnist/score.ts';

interface Options {
  out: string;
  epochs: number;
  batchSize: number;
  lr: number;
  seed: number;
  backend?: string;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('train-classifier')
    .description('train the MNIST evaluation classifier on the train split and save it (default data/classifier)')
    .option('--out <dir>', 'output folder', DEFAULT_CLASSIFIER_DIR)
    .option('--epochs <n>', 'epochs over the 9,000 train digits', int(1), 10)
    .option('--batch-size <n>', 'batch size', int(1), 32)
    .option('--lr <x>', 'Adam learning rate (cosine-decayed to 5%)', float, 1e-3)
    .option('--seed <n>', 'init and shuffling seed', int(0), 0)
    .option('--json', 'print the result as JSON')
    .addOption(backendOption())
    .action(async (opts: Options) => {
      const choice = await initBackend(opts.backend);
      const { train, heldout } = loadMnist();
      const classifier = DigitClassifier.init(defaultConfig(), opts.seed);
      const t0 = performance.now();
      const losses = classifier.train(train, {
        epochs: opts.epochs,
        batchSize: opts.batchSize,
        lr: opts.lr,
        seed: opts.seed,
        onEpoch: (epoch, loss, seconds) => log.info({ epoch: epoch + 1, of: opts.epochs, loss: Number(loss.toFixed(4)), seconds: Number(seconds.toFixed(1)) }, 'classifier epoch'),
      });
      const seconds = (performance.now() - t0) / 1000;
      const heldoutAccuracy = accuracy(classifier.predictDigits(heldout.images), heldout.labels);
      const trainAccuracy = accuracy(classifier.predictDigits(train.images), train.labels);
      // the floor of the FD: 1,000 real train digits vs the 1,000 held-out ones, scored like samples
      const scorer = await Scorer.create({ classifier });
      const floor = scorer.realFloor(1000);
      const training = {
        split: 'train (9,000 digits; see src/mnist/dataset.ts)',
        epochs: opts.epochs, batch_size: opts.batchSize, lr: opts.lr, lr_schedule: 'cosine to 0.05*lr', seed: opts.seed, shift_augmentation_px: 2,
        final_loss: losses.at(-1), train_accuracy: trainAccuracy, heldout_accuracy: heldoutAccuracy,
        seconds: Number(seconds.toFixed(1)), backend: choice.backend,
        real_floor_n1000: floor,
      };
      await classifier.save(opts.out, training);
      classifier.dispose();
      if (opts.json) process.stdout.write(JSON.stringify({ out: opts.out, ...training }) + '\n');
      else {
        process.stdout.write(`held-out accuracy ${heldoutAccuracy.toFixed(4)} (train ${trainAccuracy.toFixed(4)}), ${seconds.toFixed(0)} s on ${choice.backend}; saved to ${opts.out}\n`);
        process.stdout.write(`FD floor (1,000 real train vs 1,000 held-out digits): ${floor.fd.toFixed(3)}\n`);
      }
    });
}
