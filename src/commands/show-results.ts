import type { Assistant } from '../extension/extension.js';

export const showResults = (a: Assistant) => (runId?: string) => a.panel.show(typeof runId === 'string' ? runId : undefined);
