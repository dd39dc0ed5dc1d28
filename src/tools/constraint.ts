/**
 * Enforcing `tool_choice` "required" and named functions: the output is constrained by the JSON Schema from
 * `toolOutputSchema` through `SamplingParams.structuredOutputs.json` (the llguidance-backed structured outputs).
 * Kept apart so the tool code depends on one small seam of the structured-output feature.
 */

import { ValidationError } from '../errors.js';
import { type SamplingParamsInput, samplingParamsSchema } from '../sampling-params.js';
import { type ToolPlan, toolOutputSchema } from './tool-choice.js';

/** Whether this build's sampler takes `structuredOutputs` (the structured-output feature is present). */
export function structuredOutputsAvailable(): boolean {
  return Object.hasOwn(samplingParamsSchema.shape, 'structuredOutputs');
}

/**
 * Adds the tool-choice constraint to `params` (a copy is returned). Plans without one pass through. A request
 * that already constrains its output some other way cannot also be forced into a tool call: 400.
 */
export function enforceToolChoice(params: SamplingParamsInput, plan: ToolPlan): SamplingParamsInput {
  const schema = toolOutputSchema(plan);
  if (schema === undefined) return params;
  const choice = plan.mode === 'named' ? `a named function` : '"required"';
  if (!structuredOutputsAvailable()) {
    throw new ValidationError('tool_choice', `invalid value for \`tool_choice\`: ${choice} needs structured outputs, which this build does not have`);
  }
  const withConstraint = params as SamplingParamsInput & { structuredOutputs?: unknown };
  if (withConstraint.structuredOutputs != null) {
    throw new ValidationError('tool_choice', `invalid value for \`tool_choice\`: ${choice} cannot be combined with another output constraint`);
  }
  return { ...params, structuredOutputs: { json: schema } } as SamplingParamsInput;
}
