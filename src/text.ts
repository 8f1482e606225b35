// Text rules shared by request validation and session ids.

/**
 * JSON may carry an unpaired surrogate ("\ud83d"); it is not Unicode text and no tokenizer can
 * encode it, so every text field refuses it at the edge.
 */
export const hasLoneSurrogate = (s: string): boolean => /\p{Cs}/u.test(s);
