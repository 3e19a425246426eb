"""Retrievers and vector stores rank like brute-force cosine over the core's vectors; an LCEL RAG chain runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from bge_icl import ICLEmbedder
from langchain_bge_icl import BgeIclEmbeddings
from tests.conftest import NOTEBOOK_QUERIES, SEARCH_CORPUS, SEARCH_QUERIES

CORPUS = [
    *SEARCH_CORPUS,
    "The recommended dietary allowance of protein is 0.8 grams per kilogram of body weight.",
    "Stress and lack of exercise can make muscle pain worse.",
]
QUERIES = SEARCH_QUERIES
K = 4


def brute_force_top_k(core: ICLEmbedder, query: str, k: int = K) -> list[str]:
    scores = core.encode_corpus(CORPUS) @ core.encode_queries([query])[0]
    return [CORPUS[i] for i in np.argsort(-scores, kind="stable")[:k]]


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


@pytest.fixture(scope="module")
def store(embeddings: BgeIclEmbeddings) -> InMemoryVectorStore:
    return InMemoryVectorStore.from_texts(CORPUS, embedding=embeddings)


@pytest.mark.parametrize("query", QUERIES)
def test_in_memory_retriever_ranks_like_brute_force(store: InMemoryVectorStore, core: ICLEmbedder, query: str) -> None:
    docs = store.as_retriever(search_kwargs={"k": K}).invoke(query)
    assert [d.page_content for d in docs] == brute_force_top_k(core, query)


async def test_async_retriever_ranks_like_brute_force(store: InMemoryVectorStore, core: ICLEmbedder) -> None:
    docs = await store.as_retriever(search_kwargs={"k": K}).ainvoke(QUERIES[0])
    assert [d.page_content for d in docs] == brute_force_top_k(core, QUERIES[0])


def test_faiss_index_ranks_like_brute_force(embeddings: BgeIclEmbeddings, core: ICLEmbedder) -> None:
    """A raw faiss inner-product index over the adapter's vectors."""
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatIP(embeddings.dimension)
    index.add(np.asarray(embeddings.embed_documents(CORPUS), dtype=np.float32))
    for query in QUERIES:
        _, ids = index.search(np.asarray([embeddings.embed_query(query)], dtype=np.float32), K)
        assert [CORPUS[i] for i in ids[0]] == brute_force_top_k(core, query)


def test_langchain_community_faiss_ranks_like_brute_force(embeddings: BgeIclEmbeddings, core: ICLEmbedder) -> None:
    """langchain-community's FAISS vector store (installed by the test extra)."""
    pytest.importorskip("faiss")
    vectorstores = pytest.importorskip("langchain_community.vectorstores")
    store = vectorstores.FAISS.from_texts(CORPUS, embedding=embeddings)
    for query in QUERIES:
        docs = store.as_retriever(search_kwargs={"k": K}).invoke(query)
        assert [d.page_content for d in docs] == brute_force_top_k(core, query)


def build_rag_chain(store: InMemoryVectorStore, prompts: list[str]) -> Runnable[str, str]:
    def capture(prompt: PromptValue) -> PromptValue:
        prompts.append(prompt.to_string())
        return prompt

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer using only this context:\n\n{context}"), ("human", "{question}")]
    )
    llm = FakeListChatModel(responses=["About 46 grams a day."])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    return (
        {"context": retriever | RunnableLambda(format_docs), "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(capture)
        | llm
        | StrOutputParser()
    )


def test_rag_chain_puts_the_retrieved_passages_in_the_prompt(store: InMemoryVectorStore, core: ICLEmbedder) -> None:
    prompts: list[str] = []
    answer = build_rag_chain(store, prompts).invoke(NOTEBOOK_QUERIES[0])
    assert answer == "About 46 grams a day."
    (prompt,) = prompts
    assert NOTEBOOK_QUERIES[0] in prompt
    top, second, *rest = brute_force_top_k(core, NOTEBOOK_QUERIES[0], k=len(CORPUS))
    assert top in prompt
    assert second in prompt
    assert not any(passage in prompt for passage in rest)


async def test_rag_chain_runs_async(store: InMemoryVectorStore, core: ICLEmbedder) -> None:
    prompts: list[str] = []
    answer = await build_rag_chain(store, prompts).ainvoke(NOTEBOOK_QUERIES[1])
    assert answer == "About 46 grams a day."
    assert all(p in prompts[0] for p in brute_force_top_k(core, NOTEBOOK_QUERIES[1], k=2))
