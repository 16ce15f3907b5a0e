"""The exported reward model's tokenizer: a pad token that never ends a scored row, and right padding.

`*ForSequenceClassification` reads the score at the last token that is not `config.pad_token_id`. A reward
row ends in EOS (lora_rlhf scores prompt + response + EOS), so a pad token equal to EOS — what many
tokenizers without one get, and what lora_rlhf's own loader falls back to — would move the read one token
back. The pad is the tokenizer's own if it differs from EOS, else another special token it has (unk, bos, ...),
else a new `<|reward_pad|>` token (the embeddings then grow by a row where the vocabulary has none spare).

Right padding: real tokens keep positions 0..n-1 in every architecture without `position_ids` (GPT-2's
absolute positions included) and never attend to the pads after them; TRL's reward scoring pads right too.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

NEW_PAD = "<|reward_pad|>"


def set_reward_padding(tokenizer) -> bool:
    """Give `tokenizer` a pad token other than EOS and right padding, in place; True if a token was added."""
    tokenizer.padding_side = "right"
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return False
    for token in (tokenizer.unk_token, tokenizer.bos_token, *tokenizer.all_special_tokens):
        if token is not None and tokenizer.convert_tokens_to_ids(token) not in (eos, None):
            logger.info("reward export: padding with %r (the pad token was EOS or missing)", token)
            tokenizer.pad_token = token
            return False
    tokenizer.add_special_tokens({"pad_token": NEW_PAD})
    logger.info("reward export: added the pad token %r (id %d)", NEW_PAD, tokenizer.pad_token_id)
    return True
