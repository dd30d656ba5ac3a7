// Chat templates are Python Jinja; @huggingface/jinja (0.5.x) differs from it
// in two ways real templates hit:
// - str.strip/lstrip/rstrip(chars) ignore `chars` and strip whitespace:
//   Qwen3's `content.split('</think>')[-1].lstrip('\n')` also ate an earlier
//   answer's indentation;
// - == and != compare as JavaScript's ==: '' == false held, so Llama-2-chat's
//   `system_message != false` dropped an empty system block.
// The library exports no runtime value classes, so the fix reaches them
// through values it makes; a self-check after patching undoes nothing but
// says whether the patch took (tested in test/tokenizer.test.ts).
import { Environment, Interpreter, Template } from '@huggingface/jinja';

interface RuntimeValue {
  type: string;
  value: unknown;
}
type ValueClass = new (value: unknown) => RuntimeValue;

/** Python's str.strip family: `chars` absent or None strips whitespace. */
function stripChars(text: string, chars: unknown, left: boolean, right: boolean): string {
  if (typeof chars !== 'string') return left && right ? text.trim() : left ? text.trimStart() : text.trimEnd();
  const set = new Set(Array.from(chars));
  const cps = Array.from(text);
  let start = 0;
  let end = cps.length;
  while (left && start < end && set.has(cps[start])) start++;
  while (right && end > start && set.has(cps[end - 1])) end--;
  return cps.slice(start, end).join('');
}

const NUMERIC = new Set(['IntegerValue', 'FloatValue', 'BooleanValue']);

/** Python equality where it differs from JavaScript's ==: values of different kinds are not equal ('' != False, '1' != 1). */
function pythonEquals(a: RuntimeValue, b: RuntimeValue): boolean | undefined {
  if (a.type === b.type || (NUMERIC.has(a.type) && NUMERIC.has(b.type))) return undefined;
  if ((a.type === 'NullValue' || a.type === 'UndefinedValue') && (b.type === 'NullValue' || b.type === 'UndefinedValue')) return undefined;
  return false;
}

let patched: boolean | undefined;

/** Applies the fixes once; true if templates now behave as Python's Jinja on both points. */
export function pythonJinja(): boolean {
  if (patched !== undefined) return patched;
  const env = new Environment();
  env.set('s', '');
  env.set('b', true);
  const sample = env.lookupVariable('s') as unknown as RuntimeValue & { builtins: Map<string, RuntimeValue> };
  const StringValue = sample.constructor as ValueClass;
  const BooleanValue = (env.lookupVariable('b') as unknown as RuntimeValue).constructor as ValueClass;
  const FunctionValue = sample.builtins.get('upper')?.constructor as (new (fn: (args: RuntimeValue[]) => RuntimeValue) => RuntimeValue) | undefined;
  const proto = Object.getPrototypeOf(sample) as object;
  const builtins = Object.getOwnPropertyDescriptor(proto, 'builtins')?.get;
  if (FunctionValue && builtins) {
    Object.defineProperty(proto, 'builtins', {
      configurable: true,
      get(this: RuntimeValue & { _pythonStrip?: boolean }) {
        const map = builtins.call(this) as Map<string, RuntimeValue>;
        if (!this._pythonStrip) {
          this._pythonStrip = true;
          const text = this.value as string;
          const strip = (left: boolean, right: boolean) =>
            new FunctionValue((args) => new StringValue(stripChars(text, args[0]?.value, left, right)));
          map.set('strip', strip(true, true));
          map.set('lstrip', strip(true, false));
          map.set('rstrip', strip(false, true));
        }
        return map;
      },
    });
  }
  const interpreter = Interpreter.prototype as unknown as {
    evaluate(node: unknown, env: unknown): RuntimeValue;
    evaluateBinaryExpression(node: { operator: { value: string }; left: unknown; right: unknown }, env: unknown): RuntimeValue;
  };
  const binary = interpreter.evaluateBinaryExpression;
  interpreter.evaluateBinaryExpression = function (node, scope) {
    const op = node.operator.value;
    if (op !== '==' && op !== '!=') return binary.call(this, node, scope);
    const left = this.evaluate(node.left, scope);
    const right = this.evaluate(node.right, scope);
    const equal = pythonEquals(left, right) ?? left.value == right.value; // eslint-disable-line eqeqeq
    return new BooleanValue(op === '==' ? equal : !equal);
  };
  const check = new Template("{{ 'xxaxx\\n'.strip('x\\n') }}|{{ '\\n  a'.lstrip('\\n') }}|{{ '' == false }}|{{ 1 == true }}|{{ 'a b '.rstrip() }}");
  patched = check.render({}) === 'a|  a|false|true|a b';
  return patched;
}
