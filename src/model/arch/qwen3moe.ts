// Qwen3-MoE: neox rope, per-head RMSNorm of q and k before rope, top-k weights renormalised
// (norm_topk_prob), head_dim from attention.key_length.
import type { Architecture } from './index.js';

export const qwen3moe: Architecture = {
  name: 'qwen3moe',
  rope: 'neox',
  qkNorm: 'per-head',
  qkvBias: false,
  normalizeExpertWeights: true,
  sharedExpert: false,
  expertFfnKey: 'expert_feed_forward_length',
};
