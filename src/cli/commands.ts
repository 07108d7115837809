/** The list of CLI commands; add a file under src/cli and its `register` here. */
import type { Command } from 'commander';
import { register as backend } from './backend.ts';
import { register as trainClassifier } from './train-classifier.ts';
import { register as embed } from './embed.ts';
import { register as inspect } from './inspect.ts';
import { register as importNpy } from './import_npy.ts';
import { register as trainTeacher } from './train_teacher.ts';
import { register as distill } from './distill.ts';
import { register as defaultRun } from './default.ts';
import { register as unetForward } from './unet_forward.ts';
import { register as sample } from './sample.ts';
import { register as evaluate } from './eval.ts';
import { register as bench } from './bench.ts';
import { register as step } from './step.ts';

export const COMMANDS: ((program: Command) => void)[] = [backend, trainClassifier, embed, inspect, importNpy, trainTeacher, distill, defaultRun, unetForward, step, sample, evaluate, bench];
