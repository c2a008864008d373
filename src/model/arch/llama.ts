// llama with experts (Mixtral): adjacent-pair rope, top-k weights renormalised, expert width in
// feed_forward_length.
import type { Architecture } from './index.js';

export const llama: Architecture = {
  name: 'llama',
  rope: 'normal',
  qkNorm: 'none',
  qkvBias: false,
  normalizeExpertWeights: true,
  sharedExpert: false,
  expertFfnKey: 'feed_forward_length',
};
