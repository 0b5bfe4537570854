"""A data2vec text classifier on the mean of the real tokens, for `transformers` (written by data2vec's
``convert --to-hf`` beside the weights of a text model fine-tuned with ``finetune.head=linear``).

`Data2VecTextForSequenceClassification` classifies RoBERTa's ``<s>`` token through a dense + tanh layer; this
head averages the last layer over the tokens the attention mask keeps and applies one linear layer, which is
what data2vec computed. The encoder is `transformers`' own `Data2VecTextModel`, so the weights load unchanged.
Load it with ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` or
``pipeline("text-classification", model=folder, trust_remote_code=True)``.
"""

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import (
    Data2VecTextConfig,
    Data2VecTextModel,
    Data2VecTextPreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput


class Data2VecTextMeanConfig(Data2VecTextConfig):
    """`Data2VecTextConfig` under its own model type, so that loading without `trust_remote_code` fails
    instead of silently building RoBERTa's head with fresh weights."""

    model_type = "data2vec-text-mean"


class Data2VecTextForMeanPooledClassification(Data2VecTextPreTrainedModel):
    """`Data2VecTextModel`, the mean of its last layer over real tokens, dropout, one linear layer."""

    config_class = Data2VecTextMeanConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.data2vec_text = Data2VecTextModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, **kwargs):
        outputs = self.data2vec_text(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                     position_ids=position_ids, inputs_embeds=inputs_embeds,
                                     output_hidden_states=output_hidden_states,
                                     output_attentions=output_attentions, return_dict=True)
        hidden = outputs.last_hidden_state  # [B, T, D]
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            keep = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                loss = MSELoss()(logits.squeeze(), labels.squeeze())
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels)
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
        return out if return_dict is not False else out.to_tuple()
