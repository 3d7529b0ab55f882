/**
 * `FromSchema<S>`: the TypeScript type of the data a JSON schema (written `as const`) accepts,
 * so a schema is the one place an option is declared. Small on purpose: it covers the keywords
 * qhcp's schemas use (type, enum, const, anyOf, oneOf, items, properties, required,
 * additionalProperties, default) and yields `unknown` for anything else.
 *
 * Two views of the same schema:
 * - `FromSchema<S>` (mode 'out'): after validation filled the defaults in, so a property with a
 *   `default` is present; what a plugin's constructor and the core receive.
 * - `FromSchema<S, 'in'>`: what a user writes; only `required` properties are required.
 */

export type SchemaMode = 'in' | 'out';

type Simplify<T> = { [K in keyof T]: T[K] } & {};

type Tuple<I extends readonly unknown[], M extends SchemaMode> = I extends readonly [infer H, ...infer R] ? [FromSchema<H, M>?, ...Tuple<R, M>] : [];

type Required_<S> = S extends { readonly required: readonly (infer R)[] } ? R : never;

type PresentKeys<S, P, M extends SchemaMode> = {
  [K in keyof P]: K extends Required_<S> ? K : M extends 'out' ? (P[K] extends { readonly default: unknown } ? K : never) : never;
}[keyof P];

type Extra<S, M extends SchemaMode> = S extends { readonly additionalProperties: infer A }
  ? A extends false | true
    ? unknown
    : { [key: string]: FromSchema<A, M> }
  : unknown;

type ObjectOf<S, M extends SchemaMode> = S extends { readonly properties: infer P }
  ? Simplify<
      { -readonly [K in PresentKeys<S, P, M> & keyof P]: FromSchema<P[K], M> } & {
        -readonly [K in Exclude<keyof P, PresentKeys<S, P, M>>]?: FromSchema<P[K], M>;
      } & Extra<S, M>
    >
  : S extends { readonly additionalProperties: infer A }
    ? A extends false
      ? Record<string, never>
      : A extends true
        ? Record<string, unknown>
        : { [key: string]: FromSchema<A, M> }
    : Record<string, unknown>;

type OfType<T, S, M extends SchemaMode> = T extends 'string'
  ? string
  : T extends 'number' | 'integer'
    ? number
    : T extends 'boolean'
      ? boolean
      : T extends 'null'
        ? null
        : T extends 'array'
          ? S extends { readonly items: infer I }
            ? I extends readonly unknown[]
              ? Tuple<I, M>
              : FromSchema<I, M>[]
            : unknown[]
          : T extends 'object'
            ? ObjectOf<S, M>
            : unknown;

export type FromSchema<S, M extends SchemaMode = 'out'> = S extends { readonly enum: readonly (infer E)[] }
  ? E
  : S extends { readonly const: infer C }
    ? C
    : S extends { readonly anyOf: readonly (infer A)[] }
      ? A extends unknown
        ? FromSchema<A, M>
        : never
      : S extends { readonly oneOf: readonly (infer A)[] }
        ? A extends unknown
          ? FromSchema<A, M>
          : never
        : S extends { readonly type: infer T }
          ? T extends readonly (infer U)[]
            ? OfType<U, S, M>
            : OfType<T, S, M>
          : S extends { readonly properties: unknown }
            ? ObjectOf<S, M>
            : unknown;

/** The shape every options schema must have: an object schema (its properties typed by FromSchema). */
export interface ObjectSchema {
  readonly type: 'object';
  readonly properties?: Readonly<Record<string, object>>;
  readonly required?: readonly string[];
  readonly additionalProperties?: boolean | object;
  readonly [keyword: string]: unknown;
}
