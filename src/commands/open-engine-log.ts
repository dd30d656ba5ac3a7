import type { Assistant } from '../extension/extension.js';

export const openEngineLog = (a: Assistant) => () => a.log.show(true);
