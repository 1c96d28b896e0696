"""Protein sequence modelling: FASTA reading and amino-acid tokenization."""

from performers.proteins.fasta import FastaError, FastaRecord, read_fasta
from performers.proteins.tokenizer import ProteinTokenizer

__all__ = ["FastaError", "FastaRecord", "ProteinTokenizer", "read_fasta"]
