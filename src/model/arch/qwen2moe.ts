// Qwen1.5-MoE / Qwen2-MoE: neox rope, q/k/v biases, weights NOT renormalised, plus a shared expert
// whose output is scaled by sigmoid(ffn_gate_inp_shexp . x).
import type { Architecture } from './index.js';

export const qwen2moe: Architecture = {
  name: 'qwen2moe',
  rope: 'neox',
  qkNorm: 'none',
  qkvBias: true,
  normalizeExpertWeights: false,
  sharedExpert: true,
  expertFfnKey: 'expert_feed_forward_length',
};
