/**
 * A checksum of the trained weights (student, then LoRA, in parameter order) over their float32
 * bits, to check that the processes of an MPI world still hold the same model.
 */
import type { DistillState } from '../operators/state.ts';

/** FNV-1a over the 32-bit words of every weight: equal iff the bits are equal (up to a 2⁻³² chance). */
export function weightsChecksum(state: Pick<DistillState, 'student' | 'lora'>): number {
  let h = 0x811c9dc5;
  for (const store of [state.student.store, state.lora.store]) {
    for (const v of store.named().values()) {
      const data = v.dataSync() as Float32Array;
      const words = new Uint32Array(data.buffer, data.byteOffset, data.length);
      for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i]!, 0x01000193);
    }
  }
  return h >>> 0;
}
