// Asking for one or more questions: a quick pick where each Enter on typed
// text adds a question (pasted text adds one question per line), recent
// questions can be ticked, and Enter on an empty box runs.
import * as vscode from 'vscode';

const RECENT_KEY = 'mlxBatch.recentQuestions';
const MAX_RECENT = 30;

interface QuestionItem extends vscode.QuickPickItem {
  question?: string;
  run?: boolean;
  /** The typed text, offered as a new question. */
  add?: boolean;
}

export async function askForQuestions(memento: vscode.Memento, title: string): Promise<string[] | undefined> {
  const recent = memento.get<string[]>(RECENT_KEY, []);
  const chosen: string[] = [];
  const pick = vscode.window.createQuickPick<QuestionItem>();
  pick.title = title;
  pick.canSelectMany = false;
  pick.ignoreFocusOut = true;
  const refresh = () => {
    pick.placeholder = chosen.length === 0
      ? 'Type a question and press Enter (add more the same way), or pick a recent one'
      : `${chosen.length} question${chosen.length === 1 ? '' : 's'}: type another and press Enter, or press Enter on an empty box to run`;
    const items: QuestionItem[] = [];
    if (chosen.length > 0) items.push({ label: `$(play) Ask ${chosen.length} question${chosen.length === 1 ? '' : 's'}`, run: true, alwaysShow: true });
    items.push(...chosen.map((q) => ({ label: `$(check) ${q}`, description: 'added', question: q, alwaysShow: true })));
    const typed = pick.value.trim();
    if (typed) items.unshift({ label: `$(add) ${typed}`, description: 'add this question', question: typed, add: true, alwaysShow: true });
    items.push(...recent.filter((q) => !chosen.includes(q)).map((q) => ({ label: q, description: 'recent', question: q })));
    pick.items = items;
    pick.activeItems = items.slice(0, 1);
  };
  refresh();
  const result = await new Promise<string[] | undefined>((resolve) => {
    pick.onDidChangeValue(refresh);
    pick.onDidAccept(() => {
      const typed = pick.value;
      const active = pick.activeItems[0];
      // Typed text filters the list too: Enter on a highlighted recent question takes that one, not the fragment.
      const onOther = active !== undefined && !active.run && !active.add;
      if (typed.trim() && !onOther) {
        for (const q of typed.split(/\r?\n/).map((s) => s.trim()).filter(Boolean)) if (!chosen.includes(q)) chosen.push(q);
        pick.value = '';
        refresh();
        return;
      }
      if (active?.run || !active) {
        resolve(chosen.length ? [...chosen] : undefined);
        pick.hide();
        return;
      }
      if (active.question) {
        const i = chosen.indexOf(active.question);
        if (i >= 0) chosen.splice(i, 1); // picking an added question removes it
        else chosen.push(active.question);
        pick.value = '';
        refresh();
      }
    });
    pick.onDidHide(() => resolve(undefined));
    pick.show();
  });
  pick.dispose();
  if (result) await memento.update(RECENT_KEY, [...result, ...recent.filter((q) => !result.includes(q))].slice(0, MAX_RECENT));
  return result;
}
