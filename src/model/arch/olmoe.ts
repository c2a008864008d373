// OLMoE: neox rope, RMSNorm over the whole q (and k) projection before splitting into heads, weights
// NOT renormalised, expert width in feed_forward_length.
import type { Architecture } from './index.js';

export const olmoe: Architecture = {
  name: 'olmoe',
  rope: 'neox',
  qkNorm: 'whole',
  qkvBias: false,
  normalizeExpertWeights: false,
  sharedExpert: false,
  expertFfnKey: 'feed_forward_length',
};
