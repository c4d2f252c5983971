"""sftdata: read any SFT format into one record type, tokenize with the loss mask, audit, dedup.

`import sftdata` never imports torch (a test checks it).
"""

from sftdata.records import Conversation, Finding, Message, Source, Tokenized

__all__ = ["Conversation", "Finding", "Message", "Source", "Tokenized"]
__version__ = "0.1.0"
