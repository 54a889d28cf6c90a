// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {MeteringLedgerBase} from "./MeteringLedgerBase.sol";
import {MeteringLedgerExtension} from "./MeteringLedgerExtension.sol";

/**
 * @title MeteringLedger
 * @notice Meters and settles health-information exchange between a regional health
 * platform and the institutions it connects (patent CN109740894A).
 *
 * Every interaction is signed (EIP-712) by the institution's current signer key, with the exact
 * units it agrees to, and relayed in batches by the platform. The contract computes the units
 * from the on-chain tariff and refuses the interaction unless they equal the signed units: a
 * `sync` credits the institution, a `fetch` debits it, an `exchange` debits the consuming
 * institution the full value and credits the providing institution the value less the platform
 * fee. Debits beyond the balance are drawn on the institution's credit line and recorded as debt,
 * which later credits repay first.
 *
 * The operator (every platform role) cannot act for an institution: registration needs the
 * consent of the key being registered; only the current signer rotates its key at once; a lost
 * key is recovered by the registrar only after a delay fixed at deploy, during which the current
 * signer can cancel; an institution cancels its own unrelayed nonces; a settlement root can be
 * superseded in the open until its dispute window has passed, and is final after.
 *
 * Units are readable as an ERC-20 with zero decimals (minted on credit, burned on debit) but
 * cannot be transferred between holders.
 *
 * The registry's rotation and recovery, nonce cancellation, scheduled tariffs, settlement roots, disputes
 * and reversals are served by `MeteringLedgerExtension` through this contract's fallback (same address,
 * same storage); the ABI a client uses is the union of both contracts' ABIs.
 *
 * @dev Note: the institution address is the institution's permanent account. Its signer key
 * starts as that same address and can be rotated; balance, debt, counters and event history stay
 * with the institution address. No personal health information is ever passed to this contract:
 * only content hashes, category ids and record counts.
 */
contract MeteringLedger is MeteringLedgerBase, IERC20Metadata {
    /// @notice The code serving this ledger's less frequent operations (see `MeteringLedgerExtension`).
    address public immutable EXTENSION;

    /**
     * @param admin Receives the admin role (transferable only in two steps, `adminTransferDelay` apart) and
     * every operating role; hand the operating roles to their own accounts afterwards.
     * @param adminTransferDelay Seconds between `beginDefaultAdminTransfer` and its acceptance.
     * @param recoveryDelay Seconds a registrar-started key recovery waits (48 hours is the documented default).
     * @param disputeWindow Seconds a proposed settlement root can be superseded before it is final.
     */
    constructor(address admin, uint48 adminTransferDelay, uint256 recoveryDelay, uint256 disputeWindow)
        MeteringLedgerBase(admin, adminTransferDelay, recoveryDelay, disputeWindow)
    {
        EXTENSION = address(new MeteringLedgerExtension(admin, adminTransferDelay, recoveryDelay, disputeWindow));
        _grantRole(REGISTRAR_ROLE, admin);
        _grantRole(TARIFF_ROLE, admin);
        _grantRole(RELAYER_ROLE, admin);
        _grantRole(SETTLER_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _config = Config({
            platformFeeBps: 0,
            tariffVersion: 0,
            currentPeriod: 1,
            periodStartBlock: uint64(block.number),
            paused: false,
            totalSupply: 0
        });
    }

    /// @notice Serves every function of `MeteringLedgerExtension` on this ledger's storage.
    fallback() external {
        address extension = EXTENSION;
        assembly ("memory-safe") {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), extension, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    /**
     * @notice Records one signed interaction.
     * @dev Reverts with the custom error naming the first failed check.
     */
    function recordInteraction(SignedInteraction calldata signed) external onlyRole(RELAYER_ROLE) {
        uint256 feeBps = _requireNotPaused();
        Touched memory touched = _newTouched(SINGLE_TOUCHED_SLOTS);
        _record(signed, feeBps, touched);
        _settleTouched(touched);
    }

    /**
     * @notice Records a batch of signed interactions, all or nothing, in order.
     * @dev Security considerations: a single invalid item reverts the whole batch with
     * that item's error. Relayers pre-check items with `eth_call` (see `medmeter relay`).
     *
     * Note: ERC-20 `Transfer` events are emitted once per institution per call, for the net
     * units minted to or burned from it by the whole batch (see `_settleTouched`), and each
     * institution's counters are written once; `InteractionRecorded` is emitted for every interaction.
     */
    function recordBatch(SignedInteraction[] calldata batch) external onlyRole(RELAYER_ROLE) {
        uint256 size = batch.length;
        if (size == 0 || size > MAX_BATCH_SIZE) revert BatchSizeOutOfRange(size, MAX_BATCH_SIZE);
        uint256 feeBps = _requireNotPaused();
        Touched memory touched = _newTouched(_touchedSlots(size));
        for (uint256 i; i < size; ++i) {
            _record(batch[i], feeBps, touched);
        }
        _settleTouched(touched);
    }

    /// @notice Stops all recording. Registry, tariff and settlement stay usable.
    function pause() external onlyRole(PAUSER_ROLE) {
        if (_config.paused) revert EnforcedPause();
        _config.paused = true;
        emit Paused(msg.sender);
    }

    /// @notice Resumes recording.
    function unpause() external onlyRole(PAUSER_ROLE) {
        if (!_config.paused) revert ExpectedPause();
        _config.paused = false;
        emit Unpaused(msg.sender);
    }

    /// @notice Whether recording is paused.
    function paused() external view returns (bool) {
        return _config.paused;
    }

    /// @notice Registration data of an institution.
    function institution(address account)
        external
        view
        returns (bytes32 code, string memory displayName, address signer, InstitutionStatus status, uint256 creditLine)
    {
        Profile memory profile = _profiles[account];
        return (_codes[account], _names[account], profile.signer, profile.status, profile.creditLine);
    }

    /// @notice The institution registered under `code`, or the zero address.
    function institutionByCode(bytes32 code) external view returns (address) {
        return _institutionByCode[code];
    }

    /// @notice The institution whose current signer is `signer`, or the zero address.
    function institutionBySigner(address signer) external view returns (address) {
        return _institutionBySigner[signer];
    }

    /// @notice Number of institutions ever registered.
    function institutionCount() external view returns (uint256) {
        return _institutions.length;
    }

    /// @notice The `index`-th institution in registration order.
    function institutionAt(uint256 index) external view returns (address) {
        return _institutions[index];
    }

    /// @notice Units owed by `account` beyond its balance, drawn on its credit line.
    function debtOf(address account) external view returns (uint256) {
        return _positions[account].debt;
    }

    /// @notice Cumulative counters of `account` (call at a block for their value then).
    function countersOf(address account) external view returns (Counters memory counters) {
        PackedCounters memory packed = _counters[account];
        uint256 a = packed.a;
        uint256 b = packed.b;
        counters.syncCount = (a >> A_SYNC_COUNT) & COUNT_FIELD_MASK;
        counters.syncUnits = (a >> A_SYNC_UNITS) & UNITS_FIELD_MASK;
        counters.fetchCount = (b >> B_FETCH_COUNT) & COUNT_FIELD_MASK;
        counters.fetchUnits = (a >> A_FETCH_UNITS) & UNITS_FIELD_MASK;
        counters.exchangeInCount = (b >> B_EXCHANGE_IN_COUNT) & COUNT_FIELD_MASK;
        counters.exchangeInUnits = (a >> A_EXCHANGE_IN_UNITS) & UNITS_FIELD_MASK;
        counters.exchangeOutCount = (b >> B_EXCHANGE_OUT_COUNT) & COUNT_FIELD_MASK;
        counters.exchangeOutUnits = (b >> B_EXCHANGE_OUT_UNITS) & UNITS_FIELD_MASK;
        counters.feeUnits = (b >> B_FEE_UNITS) & UNITS_FIELD_MASK;
    }

    /// @notice Whether `nonce` of `account` has been used or cancelled.
    function isNonceUsed(address account, uint256 nonce) external view returns (bool) {
        return _nonceBitmap[account][nonce >> NONCE_WORD_SHIFT] & (1 << (nonce & NONCE_BIT_MASK)) != 0;
    }

    /// @notice The 256 nonce bits of `account` starting at nonce `wordIndex * 256` (bit i = nonce used or cancelled).
    /// @dev Lets a relayer check thousands of nonces with a handful of calls.
    function nonceBitmap(address account, uint256 wordIndex) external view returns (uint256) {
        return _nonceBitmap[account][wordIndex];
    }

    /// @notice Units per record of `category` and whether it is defined.
    function rateOf(uint16 category)
        external
        view
        returns (uint256 syncUnitsPerRecord, uint256 fetchUnitsPerRecord, bool defined)
    {
        Rate memory rate = _rates[category];
        return (rate.syncUnitsPerRecord, rate.fetchUnitsPerRecord, rate.defined);
    }

    /// @notice The platform fee on exchanges, in basis points.
    function platformFeeBps() external view returns (uint256) {
        return _config.platformFeeBps;
    }

    /// @notice Number of tariff changes so far.
    function tariffVersion() external view returns (uint256) {
        return _config.tariffVersion;
    }

    /// @notice The open period and its first block.
    function currentPeriod() external view returns (uint256 period, uint256 startBlock) {
        return (_config.currentPeriod, _config.periodStartBlock);
    }

    /// @notice Block range of a closed period; reverts if it is not closed.
    function periodRange(uint256 period) external view returns (uint256 fromBlock, uint256 toBlock) {
        PeriodRange memory range = _closedPeriod(period);
        return (range.fromBlock, range.toBlock);
    }

    /// @notice The latest settlement root of `period` (proposed or final), or zero when none was anchored.
    function settlementRoot(uint256 period) external view returns (bytes32) {
        return _settlementVersions[period][_settlementVersionCount[period]].root;
    }

    /// @notice The EIP-712 digest the contract checks for `interaction`.
    function interactionDigest(Interaction calldata interaction) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(interaction));
    }

    /// @notice The EIP-712 domain separator of this deployment.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @inheritdoc IERC20Metadata
    function name() external pure returns (string memory) {
        return "medmeter metering unit";
    }

    /// @inheritdoc IERC20Metadata
    function symbol() external pure returns (string memory) {
        return "MMU";
    }

    /// @inheritdoc IERC20Metadata
    function decimals() external pure returns (uint8) {
        return 0;
    }

    /// @inheritdoc IERC20
    function totalSupply() external view returns (uint256) {
        return _config.totalSupply;
    }

    /// @inheritdoc IERC20
    function balanceOf(address account) external view returns (uint256) {
        return _positions[account].balance;
    }

    /// @notice Always zero: units cannot be approved.
    function allowance(address, address) external pure returns (uint256) {
        return 0;
    }

    /// @notice Always reverts: units are earned and spent only through recorded interactions.
    function transfer(address, uint256) external pure returns (bool) {
        revert UnitsNotTransferable();
    }

    /// @notice Always reverts: units are earned and spent only through recorded interactions.
    function transferFrom(address, address, uint256) external pure returns (bool) {
        revert UnitsNotTransferable();
    }

    /// @notice Always reverts: units are earned and spent only through recorded interactions.
    function approve(address, uint256) external pure returns (bool) {
        revert UnitsNotTransferable();
    }

    function _record(SignedInteraction calldata signed, uint256 feeBps, Touched memory touched) private {
        Interaction calldata it = signed.interaction;
        uint8 kind = it.kind;
        address account = it.institution;
        address counterparty = it.counterparty;

        if (kind > KIND_EXCHANGE) revert UnknownInteractionKind(kind);
        if (kind == KIND_EXCHANGE) {
            if (counterparty == account || counterparty == address(0)) {
                revert InvalidCounterparty(kind, account, counterparty);
            }
        } else if (counterparty != address(0)) {
            revert InvalidCounterparty(kind, account, counterparty);
        }
        uint32 records = it.records;
        if (records == 0 || records > MAX_RECORDS_PER_INTERACTION) {
            revert RecordsOutOfRange(records, MAX_RECORDS_PER_INTERACTION);
        }
        if (block.timestamp > it.deadline) revert InteractionExpired(it.deadline, block.timestamp);

        Profile memory profile = _profiles[account];
        if (profile.status != InstitutionStatus.Active) {
            if (profile.status == InstitutionStatus.None) revert InstitutionNotRegistered(account);
            revert InstitutionNotActive(account, profile.status);
        }
        address recovered = ECDSA.recover(_hashTypedDataV4(_structHash(it)), signed.r, signed.vs);
        if (recovered != profile.signer) revert InvalidSigner(account, recovered, profile.signer);

        _useNonce(account, it.nonce);

        Rate memory rate = _rates[it.category];
        if (!rate.defined) revert UnknownCategory(it.category);

        uint256 units = uint256(records) * (kind == KIND_SYNC ? rate.syncUnitsPerRecord : rate.fetchUnitsPerRecord);
        if (units != it.units) revert UnitsMismatch(account, it.nonce, it.units, units);
        uint256 fee = 0; // stays 0 unless the interaction is an exchange
        if (kind == KIND_SYNC) {
            uint256 slot = _credit(account, units, touched);
            _addCounters(touched.countersA, slot, (units << A_SYNC_UNITS) | (1 << A_SYNC_COUNT));
        } else {
            uint256 slot = _debit(account, units, profile.creditLine, touched);
            if (kind == KIND_FETCH) {
                _addCounters(touched.countersA, slot, units << A_FETCH_UNITS);
                _addCounters(touched.countersB, slot, 1 << B_FETCH_COUNT);
            } else {
                // Counted before the provider is touched: touching may flush the table.
                _addCounters(touched.countersB, slot, (units << B_EXCHANGE_OUT_UNITS) | (1 << B_EXCHANGE_OUT_COUNT));
                InstitutionStatus providerStatus = _profiles[counterparty].status;
                if (providerStatus != InstitutionStatus.Active) {
                    if (providerStatus == InstitutionStatus.None) revert InstitutionNotRegistered(counterparty);
                    revert InstitutionNotActive(counterparty, providerStatus);
                }
                fee = units * feeBps / BPS_DENOMINATOR;
                slot = _credit(counterparty, units - fee, touched);
                _addCounters(touched.countersA, slot, (units - fee) << A_EXCHANGE_IN_UNITS);
                _addCounters(touched.countersB, slot, (fee << B_FEE_UNITS) | (1 << B_EXCHANGE_IN_COUNT));
            }
        }
        _emitRecorded(it, units, fee);
    }

    /// @dev Encodes straight from calldata into scratch memory that is not kept: Solidity's encoder
    /// allocates fresh memory per event, which costs quadratically more over a batch. Every field was
    /// already validated by the Solidity reads in `_record`. Layout of the static `Interaction` in
    /// calldata: kind 0x00, institution 0x20, counterparty 0x40, category 0x60, records 0x80,
    /// units 0xa0, dataHash 0xc0, nonce 0xe0, deadline 0x100.
    function _emitRecorded(Interaction calldata it, uint256 units, uint256 fee) private {
        bytes32 topic = InteractionRecorded.selector;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, calldataload(it))
            mstore(add(ptr, 0x20), calldataload(add(it, 0x60)))
            mstore(add(ptr, 0x40), calldataload(add(it, 0x80)))
            mstore(add(ptr, 0x60), units)
            mstore(add(ptr, 0x80), fee)
            mstore(add(ptr, 0xa0), calldataload(add(it, 0xc0)))
            mstore(add(ptr, 0xc0), calldataload(add(it, 0xe0)))
            log3(ptr, 0xe0, topic, calldataload(add(it, 0x20)), calldataload(add(it, 0x40)))
        }
    }

    /// @dev EIP-712 `hashStruct`: keccak256(typeHash || the nine 32-byte fields as laid out in calldata),
    /// which is exactly `abi.encode(INTERACTION_TYPEHASH, it...)` without allocating memory. Dirty
    /// (non-canonical) field encodings hash differently from what any wallet signs, so they fail
    /// the signer check.
    function _structHash(Interaction calldata it) private pure returns (bytes32 result) {
        bytes32 typehash = INTERACTION_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            calldatacopy(add(ptr, 0x20), it, 0x120)
            result := keccak256(ptr, 0x140)
        }
    }

    function _useNonce(address account, uint256 nonce) private {
        uint256 bit = 1 << (nonce & NONCE_BIT_MASK);
        mapping(uint256 => uint256) storage bitmap = _nonceBitmap[account];
        uint256 word = bitmap[nonce >> NONCE_WORD_SHIFT];
        if (word & bit != 0) revert NonceAlreadyUsed(account, nonce);
        bitmap[nonce >> NONCE_WORD_SHIFT] = word | bit;
    }

    /// @dev Repays debt first, then mints the rest. Returns the institution's slot in `touched`.
    function _credit(address account, uint256 units, Touched memory touched) private returns (uint256 slot) {
        Position memory position = _positions[account];
        slot = _touch(touched, account, position.balance);
        uint256 repaid = units < position.debt ? units : position.debt;
        position.debt -= uint128(repaid);
        position.balance += uint128(units - repaid);
        _positions[account] = position;
    }

    /// @dev Burns from the balance, then draws the shortfall on the credit line. Returns the slot in `touched`.
    function _debit(address account, uint256 units, uint256 creditLine, Touched memory touched)
        private
        returns (uint256 slot)
    {
        Position memory position = _positions[account];
        uint256 burned = units < position.balance ? units : position.balance;
        uint256 newDebt = position.debt + (units - burned);
        if (newDebt > creditLine) {
            revert CreditLineExceeded(account, position.balance, position.debt, creditLine, units);
        }
        slot = _touch(touched, account, position.balance);
        position.balance -= uint128(burned);
        position.debt = uint128(newDebt);
        _positions[account] = position;
    }

    /// @dev Table size for a batch: a power of two at least twice the institutions it can touch
    /// (two per interaction), capped, since zeroing and scanning the table costs gas per slot.
    function _touchedSlots(uint256 batchSize) private pure returns (uint256 slots) {
        slots = SINGLE_TOUCHED_SLOTS;
        while (slots < 4 * batchSize && slots < BATCH_TOUCHED_SLOTS) {
            slots <<= 1;
        }
    }

    function _newTouched(uint256 slots) private pure returns (Touched memory) {
        return Touched(new address[](slots), new uint256[](slots), new uint256[](slots), new uint256[](slots), 0);
    }

    /// @dev The slot of `account` in `touched`; on its first touch in this call, remembers its balance before
    /// the call changed it and loads its counters.
    function _touch(Touched memory touched, address account, uint256 balanceBefore) private returns (uint256 slot) {
        address[] memory accounts = touched.accounts;
        uint256 mask = accounts.length - 1;
        slot = uint256(uint160(account)) & mask;
        while (true) {
            address occupant = accounts[slot];
            if (occupant == account) return slot;
            if (occupant == address(0)) break;
            slot = (slot + 1) & mask;
        }
        if (2 * touched.count == accounts.length) {
            _settleTouched(touched);
            slot = uint256(uint160(account)) & mask;
        }
        accounts[slot] = account;
        touched.balancesBefore[slot] = balanceBefore;
        PackedCounters storage counters = _counters[account];
        touched.countersA[slot] = counters.a;
        touched.countersB[slot] = counters.b;
        ++touched.count;
    }

    /// @dev For every touched institution: emits one `Transfer` for its net mint or burn (and moves
    /// `totalSupply` by the same net amount, so ERC-20 readers see balances change exactly as `balanceOf`
    /// does), and writes its counters once.
    function _settleTouched(Touched memory touched) private {
        if (touched.count == 0) return;
        uint256 supply = _config.totalSupply;
        address[] memory accounts = touched.accounts;
        for (uint256 slot; slot < accounts.length; ++slot) {
            address account = accounts[slot];
            if (account == address(0)) continue;
            uint256 before = touched.balancesBefore[slot];
            uint256 balance = _positions[account].balance;
            if (balance > before) {
                supply += balance - before;
                emit Transfer(address(0), account, balance - before);
            } else if (balance < before) {
                supply -= before - balance;
                emit Transfer(account, address(0), before - balance);
            }
            _storeCounters(account, touched.countersA[slot], touched.countersB[slot]);
            accounts[slot] = address(0);
        }
        _config.totalSupply = SafeCast.toUint72(supply);
        touched.count = 0;
    }

    /// @dev Adds packed `delta` to the counters of table slot `slot` (always inside the table: `_touch` masks it).
    /// Unchecked: a call adds far less than 2^248 to a word, and a field that overflows is refused when the
    /// counters are stored (`_storeCounters`). Solidity's checked, bounds-checked `+=` on the memory array cost
    /// about 800 gas an interaction in a batch of 100.
    function _addCounters(uint256[] memory counters, uint256 slot, uint256 delta) private pure {
        assembly ("memory-safe") {
            let element := add(add(counters, 0x20), shl(5, slot))
            mstore(element, add(mload(element), delta))
        }
    }

    /// @dev Writes counters that changed. A call adds far less than a field's range to any field, so a field
    /// that overflowed (and carried into its neighbour) reads smaller than before: that is refused.
    function _storeCounters(address account, uint256 a, uint256 b) private {
        PackedCounters storage stored = _counters[account];
        uint256 oldA = stored.a;
        if (a != oldA) {
            if (
                _decreased(oldA, a, A_SYNC_UNITS, UNITS_FIELD_MASK) || _decreased(oldA, a, A_FETCH_UNITS, UNITS_FIELD_MASK)
                    || _decreased(oldA, a, A_EXCHANGE_IN_UNITS, UNITS_FIELD_MASK)
                    || _decreased(oldA, a, A_SYNC_COUNT, COUNT_FIELD_MASK) || a >> A_END != COUNTERS_SENTINEL >> A_END
            ) revert CountersOverflow(account);
            stored.a = a;
        }
        uint256 oldB = stored.b;
        if (b != oldB) {
            if (
                _decreased(oldB, b, B_EXCHANGE_OUT_UNITS, UNITS_FIELD_MASK)
                    || _decreased(oldB, b, B_FEE_UNITS, UNITS_FIELD_MASK)
                    || _decreased(oldB, b, B_FETCH_COUNT, COUNT_FIELD_MASK)
                    || _decreased(oldB, b, B_EXCHANGE_IN_COUNT, COUNT_FIELD_MASK)
                    || _decreased(oldB, b, B_EXCHANGE_OUT_COUNT, COUNT_FIELD_MASK) || b >> B_END != COUNTERS_SENTINEL >> B_END
            ) revert CountersOverflow(account);
            stored.b = b;
        }
    }

    function _decreased(uint256 before, uint256 after_, uint256 shift, uint256 mask) private pure returns (bool) {
        return (after_ >> shift) & mask < (before >> shift) & mask;
    }

    /// @dev Reverts while paused; returns the platform fee, read from the same slot.
    function _requireNotPaused() private view returns (uint256 feeBps) {
        Config storage config = _config;
        if (config.paused) revert EnforcedPause();
        return config.platformFeeBps;
    }
}
